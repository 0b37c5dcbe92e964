// The template lexer: splits template source into text runs and tag tokens with jinja2's
// whitespace rules (trim_blocks and lstrip_blocks on, "-" and "+" tag modifiers, {% raw %},
// comments dropped) and Python's literal syntax (string escapes, "_" in numbers).
#pragma once
#include <string>
#include <string_view>
#include <vector>

#include "trainer/jinja/value.h"

namespace qlora::jinja {

enum class Tok { Text, VarBegin, VarEnd, BlockBegin, BlockEnd, Name, String, Int, Float, Op, Eof };

struct Token {
  Tok type;
  std::string text;  // Text content, name, operator, or the string literal's value
  int line;
  Value value;  // Int / Float literal
};

// The tokens of `source`, ending with Eof. Errors are UserError "<origin> line N: ...".
std::vector<Token> lex(std::string_view source, const std::string& origin);

}  // namespace qlora::jinja
