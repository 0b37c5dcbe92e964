// The template parser: recursive descent over the lexer's tokens with jinja2's operator
// precedence. Constructs outside the supported subset (include, import, call blocks, unknown
// filters or tests, ...) are rejected here, so an unsupported template fails when it is loaded.
#pragma once
#include <string>
#include <vector>

#include "trainer/jinja/ast.h"
#include "trainer/jinja/lexer.h"

namespace qlora::jinja {

// The statements of a whole template; has_generation is set when it has a {% generation %}
// block. Errors are UserError "<origin> line N: ...".
Body parse(std::vector<Token> tokens, const std::string& origin, bool& has_generation);

}  // namespace qlora::jinja
