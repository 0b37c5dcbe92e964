// The Jinja subset: lexer (jinja2's whitespace rules with trim_blocks and lstrip_blocks on),
// recursive-descent parser (jinja2's operator precedence) and a tree-walking renderer with
// jinja2's scoping (a for-loop iteration is a fresh scope; if does not open one).
#include <cerrno>
#include <clocale>
#include <cmath>
#include <ctime>
#include <cwctype>
#include <locale.h>
#include <unordered_map>
#include <unordered_set>

#include "trainer/common/error.h"
#include "trainer/tokenizer/jinja.h"

namespace qlora::jinja {

namespace {

// A value operation failed; the renderer adds the template line and turns it into a UserError.
struct ValueError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

template <class... A>
[[noreturn]] void value_error(A&&... a) {
  throw ValueError(detail::concat(std::forward<A>(a)...));
}

// ---- unicode helpers --------------------------------------------------------------------------

locale_t utf8_locale() {
  static locale_t loc = [] {
    locale_t l = newlocale(LC_CTYPE_MASK, "C.UTF-8", static_cast<locale_t>(0));
    if (!l) l = newlocale(LC_CTYPE_MASK, "en_US.UTF-8", static_cast<locale_t>(0));
    return l;
  }();
  return loc;
}

char32_t cp_upper(char32_t c) {
  if (c < 0x80) return (c >= 'a' && c <= 'z') ? c - 32 : c;
  locale_t l = utf8_locale();
  return l ? static_cast<char32_t>(towupper_l(static_cast<wint_t>(c), l)) : c;
}

char32_t cp_lower(char32_t c) {
  if (c < 0x80) return (c >= 'A' && c <= 'Z') ? c + 32 : c;
  locale_t l = utf8_locale();
  return l ? static_cast<char32_t>(towlower_l(static_cast<wint_t>(c), l)) : c;
}

bool cp_alpha(char32_t c) {
  if (c < 0x80) return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
  locale_t l = utf8_locale();
  return l && iswalpha_l(static_cast<wint_t>(c), l);
}

bool cp_digit(char32_t c) {
  if (c < 0x80) return c >= '0' && c <= '9';
  locale_t l = utf8_locale();
  return l && iswdigit_l(static_cast<wint_t>(c), l);
}

bool is_ascii(std::string_view s) {
  for (unsigned char c : s)
    if (c >= 0x80) return false;
  return true;
}

// str.upper()/lower() with Python's one-to-many mappings for the common cases (ß → SS, ligatures).
std::string str_upper(const std::string& s) {
  std::u32string out;
  for (char32_t c : utf8::decode(s)) {
    switch (c) {
      case 0xDF: out += U"SS"; break;
      case 0xFB00: out += U"FF"; break;
      case 0xFB01: out += U"FI"; break;
      case 0xFB02: out += U"FL"; break;
      case 0xFB03: out += U"FFI"; break;
      case 0xFB04: out += U"FFL"; break;
      case 0xFB05:
      case 0xFB06: out += U"ST"; break;
      default: out += cp_upper(c);
    }
  }
  return utf8::encode(out);
}

std::string str_lower(const std::string& s) {
  std::u32string out;
  for (char32_t c : utf8::decode(s)) {
    if (c == 0x130)
      out += U"i\u0307";
    else
      out += cp_lower(c);
  }
  return utf8::encode(out);
}

// Python str.strip/lstrip/rstrip: `chars` null strips whitespace.
std::string str_strip(const std::string& s, const std::string* chars, bool left, bool right) {
  std::u32string u = utf8::decode(s);
  std::u32string set = chars ? utf8::decode(*chars) : std::u32string();
  auto strip_it = [&](char32_t c) { return chars ? set.find(c) != std::u32string::npos : utf8::is_space(c); };
  size_t b = 0, e = u.size();
  if (left)
    while (b < e && strip_it(u[b])) ++b;
  if (right)
    while (e > b && strip_it(u[e - 1])) --e;
  return utf8::encode(std::u32string_view(u).substr(b, e - b));
}

// Python str.rstrip() of a template text run (jinja's "-" whitespace control).
std::string rstrip_ws(const std::string& s) { return str_strip(s, nullptr, false, true); }

// ---- tokens -----------------------------------------------------------------------------------

enum class Tok { Text, VarBegin, VarEnd, BlockBegin, BlockEnd, Name, String, Int, Float, Op, Eof };

struct Token {
  Tok type;
  std::string text;  // Text content, name, operator, or the string literal's value
  int line;
  Value value;       // Int / Float literal
};

class Lexer {
 public:
  Lexer(std::string_view source, const std::string& origin) : origin_(origin) {
    // jinja2 normalizes \r\n and \r to \n and drops one trailing newline (keep_trailing_newline off).
    src_.reserve(source.size());
    for (size_t i = 0; i < source.size(); ++i) {
      if (source[i] == '\r') {
        src_ += '\n';
        if (i + 1 < source.size() && source[i + 1] == '\n') ++i;
      } else {
        src_ += source[i];
      }
    }
    if (!src_.empty() && src_.back() == '\n') src_.pop_back();
  }

  std::vector<Token> run() {
    const size_t n = src_.size();
    while (pos_ < n) {
      size_t t = find_tag(pos_);
      if (t == std::string::npos) {
        push(Tok::Text, src_.substr(pos_));
        advance_to(n);
        break;
      }
      std::string text = src_.substr(pos_, t - pos_);
      char kind = src_[t + 1];  // '{', '%' or '#'
      char sign = (t + 2 < n && (src_[t + 2] == '-' || src_[t + 2] == '+')) ? src_[t + 2] : 0;
      size_t after_begin = t + 2 + (sign ? 1 : 0);
      size_t raw_body = kind == '%' ? match_raw_begin(after_begin) : std::string::npos;

      if (sign == '-') {
        text = rstrip_ws(text);
      } else if (sign != '+' && kind != '{') {
        // lstrip_blocks: whitespace between the start of the line and a block or comment tag.
        size_t l_pos = text.rfind('\n');
        l_pos = l_pos == std::string::npos ? 0 : l_pos + 1;
        if ((l_pos > 0 || line_starting_) && l_pos < text.size() && all_space(text, l_pos)) text.resize(l_pos);
      }
      if (!text.empty()) push(Tok::Text, text);
      advance_to(t);

      if (raw_body != std::string::npos) {
        lex_raw(raw_body);
      } else if (kind == '#') {
        lex_comment(after_begin);
      } else {
        push(kind == '{' ? Tok::VarBegin : Tok::BlockBegin, "");
        advance_to(after_begin);
        lex_tag(kind == '{');
      }
    }
    toks_.push_back(Token{Tok::Eof, "", line_, Value()});
    return std::move(toks_);
  }

 private:
  [[noreturn]] void fail(int line, const std::string& msg) { user_error(origin_, " line ", line, ": ", msg); }

  void push(Tok type, std::string text, Value v = Value()) {
    toks_.push_back(Token{type, std::move(text), line_, std::move(v)});
  }

  // Moves the cursor, counting lines; line_starting_ tracks whether the consumed text ended a line.
  void advance_to(size_t p) {
    for (size_t i = pos_; i < p; ++i)
      if (src_[i] == '\n') ++line_;
    if (p > pos_) line_starting_ = src_[p - 1] == '\n';
    pos_ = p;
  }

  size_t find_tag(size_t from) const {
    for (size_t i = src_.find('{', from); i != std::string::npos; i = src_.find('{', i + 1)) {
      if (i + 1 < src_.size() && (src_[i + 1] == '{' || src_[i + 1] == '%' || src_[i + 1] == '#')) return i;
    }
    return std::string::npos;
  }

  bool all_space(const std::string& s, size_t from) const {
    std::u32string u = utf8::decode(std::string_view(s).substr(from));
    for (char32_t c : u)
      if (!utf8::is_space(c)) return false;
    return true;
  }

  // Length of Python-\s whitespace starting at p.
  size_t space_run(size_t p) const {
    size_t q = p;
    while (q < src_.size()) {
      unsigned char c = src_[q];
      if (c < 0x80) {
        if (!utf8::is_space(c)) break;
        ++q;
        continue;
      }
      size_t len = (c & 0xE0) == 0xC0 ? 2 : (c & 0xF0) == 0xE0 ? 3 : 4;
      std::u32string u = utf8::decode(std::string_view(src_).substr(q, len));
      if (u.size() != 1 || !utf8::is_space(u[0])) break;
      q += len;
    }
    return q - p;
  }

  // After "{%" and its sign: `\s*raw\s*(-%}\s*|%})`; returns where the raw body starts.
  size_t match_raw_begin(size_t p) const {
    p += space_run(p);
    if (src_.compare(p, 3, "raw") != 0) return std::string::npos;
    p += 3;
    if (p < src_.size() && (std::isalnum(static_cast<unsigned char>(src_[p])) || src_[p] == '_'))
      return std::string::npos;
    p += space_run(p);
    if (src_.compare(p, 3, "-%}") == 0) return p + 3 + space_run(p + 3);
    if (src_.compare(p, 2, "%}") == 0) return p + 2;
    return std::string::npos;
  }

  // Consumes the end of a block or comment tag at p ("-%}", "+%}", "%}" or the same with '#'):
  // "-" eats all following whitespace, "+" nothing, plain eats one newline (trim_blocks).
  void finish_block_end(size_t p, char sign, size_t marker_len) {
    size_t q = p + marker_len;
    if (sign == '-') {
      q += space_run(q);
    } else if (sign != '+' && q < src_.size() && src_[q] == '\n') {
      ++q;
    }
    advance_to(q);
  }

  void lex_comment(size_t body) {
    size_t idx = src_.find("#}", body);
    if (idx == std::string::npos) fail(line_, "missing end of comment tag");
    char sign = 0;
    size_t end_at = idx;
    if (idx > body && (src_[idx - 1] == '-' || src_[idx - 1] == '+')) {
      sign = src_[idx - 1];
      end_at = idx - 1;
    }
    finish_block_end(end_at, sign, sign ? 3 : 2);
  }

  void lex_raw(size_t body) {
    // Find "{%(-|+|)\s*endraw\s*(+%}|-%}\s*|%}\n?)".
    for (size_t i = src_.find("{%", body); i != std::string::npos; i = src_.find("{%", i + 1)) {
      size_t p = i + 2;
      char sign = (p < src_.size() && (src_[p] == '-' || src_[p] == '+')) ? src_[p] : 0;
      if (sign) ++p;
      p += space_run(p);
      if (src_.compare(p, 6, "endraw") != 0) continue;
      p += 6;
      p += space_run(p);
      char esign = (p < src_.size() && (src_[p] == '-' || src_[p] == '+')) ? src_[p] : 0;
      if (src_.compare(p + (esign ? 1 : 0), 2, "%}") != 0) continue;
      std::string text = src_.substr(body, i - body);
      if (sign == '-') {
        text = rstrip_ws(text);
      } else if (sign != '+') {
        size_t l_pos = text.rfind('\n');
        l_pos = l_pos == std::string::npos ? 0 : l_pos + 1;
        bool starting = body > 0 && src_[body - 1] == '\n';
        if ((l_pos > 0 || starting) && l_pos < text.size() && all_space(text, l_pos)) text.resize(l_pos);
      }
      advance_to(body);
      if (!text.empty()) push(Tok::Text, text);
      advance_to(i);
      finish_block_end(p, esign, esign ? 3 : 2);
      return;
    }
    fail(line_, "missing end of raw directive");
  }

  // Expression tokens until the tag's end marker (only when brackets are balanced).
  void lex_tag(bool variable) {
    std::vector<char> balance;
    const size_t n = src_.size();
    while (true) {
      if (balance.empty()) {
        if (variable) {
          if (src_.compare(pos_, 3, "-}}") == 0) {
            push(Tok::VarEnd, "");
            size_t q = pos_ + 3;
            advance_to(q + space_run(q));
            return;
          }
          if (src_.compare(pos_, 2, "}}") == 0) {
            push(Tok::VarEnd, "");
            advance_to(pos_ + 2);
            return;
          }
        } else {
          if (src_.compare(pos_, 3, "-%}") == 0 || src_.compare(pos_, 3, "+%}") == 0) {
            push(Tok::BlockEnd, "");
            finish_block_end(pos_, src_[pos_], 3);
            return;
          }
          if (src_.compare(pos_, 2, "%}") == 0) {
            push(Tok::BlockEnd, "");
            finish_block_end(pos_, 0, 2);
            return;
          }
        }
      }
      if (pos_ >= n) fail(line_, variable ? "unexpected end of template, expected '}}'" : "unexpected end of template, expected '%}'");
      size_t ws = space_run(pos_);
      if (ws) {
        advance_to(pos_ + ws);
        continue;
      }
      char c = src_[pos_];
      bool after_dot = !toks_.empty() && toks_.back().type == Tok::Op && toks_.back().text == ".";
      if (std::isdigit(static_cast<unsigned char>(c))) {
        lex_number(after_dot);
      } else if (std::isalpha(static_cast<unsigned char>(c)) || c == '_') {
        size_t q = pos_;
        while (q < n && (std::isalnum(static_cast<unsigned char>(src_[q])) || src_[q] == '_')) ++q;
        push(Tok::Name, src_.substr(pos_, q - pos_));
        advance_to(q);
      } else if (c == '\'' || c == '"') {
        lex_string(c);
      } else {
        static const char* ops2[] = {"//", "**", "==", "!=", ">=", "<="};
        std::string op;
        for (const char* o : ops2)
          if (src_.compare(pos_, 2, o) == 0) op = o;
        if (op.empty()) {
          if (std::string_view("+-/*%~[](){}<>=.:|,;").find(c) == std::string_view::npos)
            fail(line_, std::string("unexpected char '") + c + "'");
          op = std::string(1, c);
        }
        if (op == "(" || op == "[" || op == "{") {
          balance.push_back(op == "(" ? ')' : op == "[" ? ']' : '}');
        } else if (op == ")" || op == "]" || op == "}") {
          if (balance.empty()) fail(line_, "unexpected '" + op + "'");
          if (balance.back() != op[0]) fail(line_, "unexpected '" + op + "', expected '" + balance.back() + "'");
          balance.pop_back();
        }
        push(Tok::Op, op);
        advance_to(pos_ + op.size());
      }
    }
  }

  void lex_number(bool after_dot) {
    const size_t n = src_.size();
    auto digits = [&](size_t q) {  // (\d+_)*\d+
      size_t s = q;
      while (q < n && (std::isdigit(static_cast<unsigned char>(src_[q])) ||
                       (src_[q] == '_' && q + 1 < n && std::isdigit(static_cast<unsigned char>(src_[q + 1])) && q > s)))
        ++q;
      return q;
    };
    size_t q = digits(pos_);
    bool is_float = false;
    if (!after_dot) {
      size_t r = q;
      if (r + 1 < n && src_[r] == '.' && std::isdigit(static_cast<unsigned char>(src_[r + 1]))) {
        r = digits(r + 1);
        is_float = true;
      }
      if (r < n && (src_[r] == 'e' || src_[r] == 'E')) {
        size_t e = r + 1;
        if (e < n && (src_[e] == '+' || src_[e] == '-')) ++e;
        if (e < n && std::isdigit(static_cast<unsigned char>(src_[e]))) {
          r = digits(e);
          is_float = true;
        }
      }
      if (is_float) q = r;
    }
    std::string text = src_.substr(pos_, q - pos_);
    std::string clean;
    for (char ch : text)
      if (ch != '_') clean += ch;
    if (is_float) {
      push(Tok::Float, text, Value(std::stod(clean)));
    } else {
      if (clean.size() > 1 && clean[0] == '0' && (clean[1] == 'x' || clean[1] == 'X' || clean[1] == 'o' ||
                                                    clean[1] == 'O' || clean[1] == 'b' || clean[1] == 'B'))
        fail(line_, "unsupported: non-decimal integer literal");
      try {
        push(Tok::Int, text, Value(static_cast<int64_t>(std::stoll(clean))));
      } catch (const std::out_of_range&) {
        fail(line_, "integer literal out of range: " + text);
      }
    }
    advance_to(q);
  }

  // Python string literal with unicode-escape decoding (what jinja2 does).
  void lex_string(char quote) {
    const size_t n = src_.size();
    size_t q = pos_ + 1;
    std::string out;
    while (true) {
      if (q >= n) fail(line_, "unterminated string");
      char c = src_[q];
      if (c == quote) break;
      if (c != '\\') {
        out += c;
        ++q;
        continue;
      }
      if (q + 1 >= n) fail(line_, "unterminated string");
      char e = src_[q + 1];
      q += 2;
      auto hex = [&](int len) {
        if (q + len > n) fail(line_, "truncated escape in string");
        char32_t v = 0;
        for (int k = 0; k < len; ++k) {
          char h = src_[q + k];
          if (!std::isxdigit(static_cast<unsigned char>(h))) fail(line_, "truncated escape in string");
          v = v * 16 + (std::isdigit(static_cast<unsigned char>(h)) ? h - '0' : (std::tolower(h) - 'a' + 10));
        }
        q += len;
        utf8::append(out, v);
      };
      switch (e) {
        case '\n': break;
        case '\\': out += '\\'; break;
        case '\'': out += '\''; break;
        case '"': out += '"'; break;
        case 'a': out += '\a'; break;
        case 'b': out += '\b'; break;
        case 'f': out += '\f'; break;
        case 'n': out += '\n'; break;
        case 'r': out += '\r'; break;
        case 't': out += '\t'; break;
        case 'v': out += '\v'; break;
        case 'x': hex(2); break;
        case 'u': hex(4); break;
        case 'U': hex(8); break;
        default:
          if (e >= '0' && e <= '7') {
            char32_t v = e - '0';
            for (int k = 0; k < 2 && q < n && src_[q] >= '0' && src_[q] <= '7'; ++k) v = v * 8 + (src_[q++] - '0');
            utf8::append(out, v);
          } else {
            out += '\\';
            out += e;
          }
      }
    }
    push(Tok::String, out);
    advance_to(q + 1);
  }

  const std::string& origin_;
  std::string src_;
  size_t pos_ = 0;
  int line_ = 1;
  bool line_starting_ = true;
  std::vector<Token> toks_;
};

// ---- syntax tree ------------------------------------------------------------------------------

struct Expr;
using ExprPtr = std::unique_ptr<Expr>;

struct Expr {
  enum Kind { Literal, Name, ListLit, DictLit, Attr, Item, Slice, Call, Filter, Test, Not, Neg, Pos, Binary,
              Concat, Compare, And, Or, Cond } kind;
  int line = 0;
  Value value;                                        // Literal
  std::string name;                                   // Name, Attr, Filter, Test, Binary operator
  std::vector<ExprPtr> args;                          // operands; Call: callee first; Filter/Test: subject first
  std::vector<std::pair<std::string, ExprPtr>> kwargs;
  std::vector<std::string> ops;                       // Compare operators
  bool negated = false;                               // Test: "is not"
  bool is_tuple = false;                              // ListLit written as a tuple
};

struct Stmt;
using StmtPtr = std::unique_ptr<Stmt>;
using Body = std::vector<StmtPtr>;

struct Stmt {
  enum Kind { Text, Print, If, For, Set, SetBlock, Macro, Break, Continue, Generation, FilterBlock, With } kind;
  int line = 0;
  std::string text;                           // Text; Macro name
  ExprPtr expr;                               // Print, Set value, For iterable
  std::vector<std::string> targets;           // Set/For names (several: tuple unpacking); With names
  std::string attr;                           // Set: "ns.attr" target when non-empty (targets[0] = ns)
  ExprPtr cond;                               // For: "if" filter
  std::vector<std::pair<ExprPtr, Body>> branches;  // If: (test, body); else has a null test
  Body body, else_body;
  std::vector<std::string> params;            // Macro parameters
  std::vector<ExprPtr> defaults;              // Macro defaults (null = none); With values
  ExprPtr filter;                             // SetBlock/FilterBlock: Filter chain applied to a null subject
};

const std::unordered_set<std::string>& known_filters() {
  static const std::unordered_set<std::string> s = {
      "abs", "attr", "capitalize", "center", "count", "d", "default", "dictsort", "e", "escape", "first",
      "float", "indent", "int", "items", "join", "last", "length", "list", "lower", "map", "max", "min",
      "reject", "rejectattr", "replace", "reverse", "round", "safe", "select", "selectattr", "sort", "string",
      "sum", "title", "tojson", "trim", "unique", "upper"};
  return s;
}

const std::unordered_set<std::string>& known_tests() {
  static const std::unordered_set<std::string> s = {
      "boolean", "callable", "defined", "divisibleby", "eq", "equalto", "==", "even", "false", "filter", "float",
      "ge", ">=", "gt", "greaterthan", ">", "in", "integer", "iterable", "le", "<=", "lower", "lt", "lessthan", "<",
      "mapping", "ne", "!=", "none", "number", "odd", "sameas", "sequence", "string", "test", "true", "undefined",
      "upper"};
  return s;
}

class Parser {
 public:
  Parser(std::vector<Token> toks, const std::string& origin) : t_(std::move(toks)), origin_(origin) {}

  Body parse_template(bool& has_generation) {
    Body b = parse_body({}, nullptr);
    has_generation = has_generation_;
    return b;
  }

 private:
  [[noreturn]] void fail(int line, const std::string& msg) const { user_error(origin_, " line ", line, ": ", msg); }
  [[noreturn]] void unsupported(int line, const std::string& what) const {
    fail(line, "unsupported construct in chat template: " + what);
  }

  const Token& cur() const { return t_[i_]; }
  const Token& peek(size_t k = 1) const { return t_[std::min(i_ + k, t_.size() - 1)]; }
  bool is_op(const char* op) const { return cur().type == Tok::Op && cur().text == op; }
  bool is_name(const char* n) const { return cur().type == Tok::Name && cur().text == n; }
  bool accept_op(const char* op) {
    if (!is_op(op)) return false;
    ++i_;
    return true;
  }
  bool accept_name(const char* n) {
    if (!is_name(n)) return false;
    ++i_;
    return true;
  }
  std::string describe(const Token& t) const {
    switch (t.type) {
      case Tok::Text: return "text";
      case Tok::VarBegin: return "'{{'";
      case Tok::VarEnd: return "'}}'";
      case Tok::BlockBegin: return "'{%'";
      case Tok::BlockEnd: return "'%}'";
      case Tok::Name: return "'" + t.text + "'";
      case Tok::String: return "string";
      case Tok::Int:
      case Tok::Float: return "number";
      case Tok::Op: return "'" + t.text + "'";
      case Tok::Eof: return "end of template";
    }
    return "?";
  }
  void expect_op(const char* op) {
    if (!accept_op(op)) fail(cur().line, std::string("expected '") + op + "', got " + describe(cur()));
  }
  void expect(Tok type, const char* what) {
    if (cur().type != type) fail(cur().line, std::string("expected ") + what + ", got " + describe(cur()));
    ++i_;
  }
  std::string expect_name() {
    if (cur().type != Tok::Name) fail(cur().line, "expected a name, got " + describe(cur()));
    return t_[i_++].text;
  }

  ExprPtr make(Expr::Kind k, int line) {
    auto e = std::make_unique<Expr>();
    e->kind = k;
    e->line = line;
    return e;
  }

  // Statements until "{% <one of ends>" (consumed up to the keyword; *which names it).
  Body parse_body(std::initializer_list<const char*> ends, std::string* which) {
    Body body;
    while (true) {
      const Token& t = cur();
      if (t.type == Tok::Eof) {
        if (ends.size() == 0) return body;
        std::string list;
        for (const char* e : ends) list += (list.empty() ? "'" : " or '") + std::string(e) + "'";
        fail(t.line, "unexpected end of template, expected " + list);
      }
      if (t.type == Tok::Text) {
        auto s = std::make_unique<Stmt>();
        s->kind = Stmt::Text;
        s->line = t.line;
        s->text = t.text;
        body.push_back(std::move(s));
        ++i_;
      } else if (t.type == Tok::VarBegin) {
        auto s = std::make_unique<Stmt>();
        s->kind = Stmt::Print;
        s->line = t.line;
        ++i_;
        s->expr = parse_tuple(true, false);
        expect(Tok::VarEnd, "'}}'");
        body.push_back(std::move(s));
      } else if (t.type == Tok::BlockBegin) {
        const Token& kw = peek();
        if (kw.type == Tok::Name) {
          for (const char* e : ends) {
            if (kw.text == e) {
              i_ += 2;
              if (which) *which = e;
              return body;
            }
          }
        }
        ++i_;
        body.push_back(parse_statement());
      } else {
        fail(t.line, "unexpected " + describe(t));
      }
    }
  }

  StmtPtr parse_statement() {
    const Token& kw = cur();
    if (kw.type != Tok::Name) fail(kw.line, "expected a statement name after '{%', got " + describe(kw));
    const std::string& k = kw.text;
    int line = kw.line;
    ++i_;
    auto s = std::make_unique<Stmt>();
    s->line = line;
    if (k == "if") {
      s->kind = Stmt::If;
      ExprPtr test = parse_tuple(false, false);
      expect(Tok::BlockEnd, "'%}'");
      while (true) {
        std::string which;
        Body b = parse_body({"elif", "else", "endif"}, &which);
        s->branches.emplace_back(std::move(test), std::move(b));
        if (which == "elif") {
          test = parse_tuple(false, false);
          expect(Tok::BlockEnd, "'%}'");
        } else if (which == "else") {
          expect(Tok::BlockEnd, "'%}'");
          s->branches.emplace_back(nullptr, parse_body({"endif"}, nullptr));
          break;
        } else {
          break;
        }
      }
      expect(Tok::BlockEnd, "'%}'");
    } else if (k == "for") {
      s->kind = Stmt::For;
      s->targets = parse_target_names(/*allow_attr=*/false, nullptr);
      if (!accept_name("in")) fail(cur().line, "expected 'in', got " + describe(cur()));
      s->expr = parse_tuple(false, false, /*stop_at_if=*/true);
      if (accept_name("if")) s->cond = parse_expression(true);
      if (is_name("recursive")) unsupported(cur().line, "recursive for loop");
      expect(Tok::BlockEnd, "'%}'");
      ++loop_depth_;
      std::string which;
      s->body = parse_body({"endfor", "else"}, &which);
      --loop_depth_;
      if (which == "else") {
        expect(Tok::BlockEnd, "'%}'");
        s->else_body = parse_body({"endfor"}, nullptr);
      }
      expect(Tok::BlockEnd, "'%}'");
    } else if (k == "set") {
      s->targets = parse_target_names(/*allow_attr=*/true, &s->attr);
      if (accept_op("=")) {
        s->kind = Stmt::Set;
        s->expr = parse_tuple(true, false);
        expect(Tok::BlockEnd, "'%}'");
      } else {
        s->kind = Stmt::SetBlock;
        if (!s->attr.empty() || s->targets.size() != 1) fail(line, "a block set needs a single name");
        if (is_op("|")) s->filter = parse_filter_chain(nullptr);
        expect(Tok::BlockEnd, "'%}'");
        s->body = parse_body({"endset"}, nullptr);
        expect(Tok::BlockEnd, "'%}'");
      }
    } else if (k == "macro") {
      s->kind = Stmt::Macro;
      s->text = expect_name();
      expect_op("(");
      while (!is_op(")")) {
        if (!s->params.empty()) expect_op(",");
        if (is_op(")")) break;
        s->params.push_back(expect_name());
        s->defaults.push_back(accept_op("=") ? parse_expression(true) : nullptr);
      }
      expect_op(")");
      expect(Tok::BlockEnd, "'%}'");
      int saved = loop_depth_;
      loop_depth_ = 0;
      s->body = parse_body({"endmacro"}, nullptr);
      loop_depth_ = saved;
      if (cur().type == Tok::Name) ++i_;  // {% endmacro name %}
      expect(Tok::BlockEnd, "'%}'");
    } else if (k == "break" || k == "continue") {
      if (loop_depth_ == 0) fail(line, "'" + k + "' outside of a for loop");
      s->kind = k == "break" ? Stmt::Break : Stmt::Continue;
      expect(Tok::BlockEnd, "'%}'");
    } else if (k == "generation") {
      s->kind = Stmt::Generation;
      has_generation_ = true;
      expect(Tok::BlockEnd, "'%}'");
      s->body = parse_body({"endgeneration"}, nullptr);
      expect(Tok::BlockEnd, "'%}'");
    } else if (k == "filter") {
      s->kind = Stmt::FilterBlock;
      s->filter = parse_filter_chain(nullptr, /*first_has_pipe=*/false);
      expect(Tok::BlockEnd, "'%}'");
      s->body = parse_body({"endfilter"}, nullptr);
      expect(Tok::BlockEnd, "'%}'");
    } else if (k == "with") {
      s->kind = Stmt::With;
      while (!(cur().type == Tok::BlockEnd)) {
        if (!s->targets.empty()) expect_op(",");
        s->targets.push_back(expect_name());
        expect_op("=");
        s->defaults.push_back(parse_expression(true));
      }
      expect(Tok::BlockEnd, "'%}'");
      s->body = parse_body({"endwith"}, nullptr);
      expect(Tok::BlockEnd, "'%}'");
    } else if (k == "include" || k == "import" || k == "from" || k == "extends" || k == "block" || k == "call" ||
               k == "do" || k == "autoescape" || k == "trans" || k == "print") {
      unsupported(line, "'{% " + k + " %}'");
    } else {
      fail(line, "unknown statement '" + k + "'");
    }
    return s;
  }

  // "a", "a, b", "(a, b)" and, with allow_attr, "ns.attr".
  std::vector<std::string> parse_target_names(bool allow_attr, std::string* attr) {
    std::vector<std::string> names;
    bool paren = accept_op("(");
    names.push_back(expect_name());
    if (allow_attr && !paren && is_op(".")) {
      ++i_;
      *attr = expect_name();
      return names;
    }
    while (accept_op(",")) {
      if (cur().type != Tok::Name) break;
      names.push_back(expect_name());
    }
    if (paren) expect_op(")");
    return names;
  }

  // jinja2 parse_tuple: a, b, c without parentheses is a tuple.
  ExprPtr parse_tuple(bool with_condexpr, bool explicit_parens, bool stop_at_if = false) {
    int line = cur().line;
    std::vector<ExprPtr> items;
    bool is_tuple = false;
    while (true) {
      if (!items.empty()) expect_op(",");
      if (cur().type == Tok::VarEnd || cur().type == Tok::BlockEnd || cur().type == Tok::Eof ||
          (explicit_parens && is_op(")")) || (stop_at_if && is_name("if")))
        break;
      items.push_back(parse_expression(with_condexpr));
      if (is_op(","))
        is_tuple = true;
      else
        break;
    }
    if (!is_tuple) {
      if (items.size() == 1) return std::move(items[0]);
      if (!explicit_parens) fail(cur().line, "expected an expression, got " + describe(cur()));
    }
    auto e = make(Expr::ListLit, line);
    e->is_tuple = true;
    e->args = std::move(items);
    return e;
  }

  ExprPtr parse_expression(bool with_condexpr) { return with_condexpr ? parse_condexpr() : parse_or(); }

  ExprPtr parse_condexpr() {
    ExprPtr e = parse_or();
    while (is_name("if")) {
      int line = cur().line;
      ++i_;
      ExprPtr test = parse_or();
      ExprPtr otherwise = accept_name("else") ? parse_condexpr() : nullptr;
      auto c = make(Expr::Cond, line);
      c->args.push_back(std::move(test));
      c->args.push_back(std::move(e));
      c->args.push_back(std::move(otherwise));
      e = std::move(c);
    }
    return e;
  }

  ExprPtr binary(Expr::Kind k, int line, ExprPtr a, ExprPtr b, std::string op = "") {
    auto e = make(k, line);
    e->name = std::move(op);
    e->args.push_back(std::move(a));
    e->args.push_back(std::move(b));
    return e;
  }

  ExprPtr parse_or() {
    ExprPtr l = parse_and();
    while (is_name("or")) {
      int line = cur().line;
      ++i_;
      l = binary(Expr::Or, line, std::move(l), parse_and());
    }
    return l;
  }

  ExprPtr parse_and() {
    ExprPtr l = parse_not();
    while (is_name("and")) {
      int line = cur().line;
      ++i_;
      l = binary(Expr::And, line, std::move(l), parse_not());
    }
    return l;
  }

  ExprPtr parse_not() {
    if (is_name("not")) {
      int line = cur().line;
      ++i_;
      auto e = make(Expr::Not, line);
      e->args.push_back(parse_not());
      return e;
    }
    return parse_compare();
  }

  ExprPtr parse_compare() {
    int line = cur().line;
    ExprPtr first = parse_math1();
    ExprPtr cmp;
    while (true) {
      std::string op;
      if (cur().type == Tok::Op && (cur().text == "==" || cur().text == "!=" || cur().text == "<" ||
                                    cur().text == ">" || cur().text == "<=" || cur().text == ">=")) {
        op = cur().text;
        ++i_;
      } else if (is_name("in")) {
        op = "in";
        ++i_;
      } else if (is_name("not") && peek().type == Tok::Name && peek().text == "in") {
        op = "notin";
        i_ += 2;
      } else {
        break;
      }
      if (!cmp) {
        cmp = make(Expr::Compare, line);
        cmp->args.push_back(std::move(first));
      }
      cmp->ops.push_back(op);
      cmp->args.push_back(parse_math1());
    }
    return cmp ? std::move(cmp) : std::move(first);
  }

  ExprPtr parse_math1() {
    ExprPtr l = parse_concat();
    while (is_op("+") || is_op("-")) {
      std::string op = cur().text;
      int line = cur().line;
      ++i_;
      l = binary(Expr::Binary, line, std::move(l), parse_concat(), op);
    }
    return l;
  }

  ExprPtr parse_concat() {
    int line = cur().line;
    ExprPtr first = parse_math2();
    if (!is_op("~")) return first;
    auto e = make(Expr::Concat, line);
    e->args.push_back(std::move(first));
    while (accept_op("~")) e->args.push_back(parse_math2());
    return e;
  }

  ExprPtr parse_math2() {
    ExprPtr l = parse_pow();
    while (is_op("*") || is_op("/") || is_op("//") || is_op("%")) {
      std::string op = cur().text;
      int line = cur().line;
      ++i_;
      l = binary(Expr::Binary, line, std::move(l), parse_pow(), op);
    }
    return l;
  }

  ExprPtr parse_pow() {
    ExprPtr l = parse_unary(true);
    while (is_op("**")) {
      int line = cur().line;
      ++i_;
      l = binary(Expr::Binary, line, std::move(l), parse_unary(true), "**");
    }
    return l;
  }

  ExprPtr parse_unary(bool with_filter) {
    int line = cur().line;
    ExprPtr node;
    if (is_op("-") || is_op("+")) {
      auto e = make(is_op("-") ? Expr::Neg : Expr::Pos, line);
      ++i_;
      e->args.push_back(parse_unary(false));
      node = std::move(e);
    } else {
      node = parse_primary();
    }
    node = parse_postfix(std::move(node));
    if (with_filter) node = parse_filter_expr(std::move(node));
    return node;
  }

  ExprPtr parse_primary() {
    const Token& t = cur();
    int line = t.line;
    if (t.type == Tok::Name) {
      ++i_;
      auto e = make(Expr::Literal, line);
      if (t.text == "true" || t.text == "True") {
        e->value = Value(true);
      } else if (t.text == "false" || t.text == "False") {
        e->value = Value(false);
      } else if (t.text == "none" || t.text == "None") {
        e->value = Value(nullptr);
      } else {
        e->kind = Expr::Name;
        e->name = t.text;
      }
      return e;
    }
    if (t.type == Tok::String) {
      std::string s;
      while (cur().type == Tok::String) s += t_[i_++].text;
      auto e = make(Expr::Literal, line);
      e->value = Value(std::move(s));
      return e;
    }
    if (t.type == Tok::Int || t.type == Tok::Float) {
      ++i_;
      auto e = make(Expr::Literal, line);
      e->value = t.value;
      return e;
    }
    if (accept_op("(")) {
      ExprPtr e = parse_tuple(true, true);
      expect_op(")");
      return e;
    }
    if (accept_op("[")) {
      auto e = make(Expr::ListLit, line);
      while (!is_op("]")) {
        if (!e->args.empty()) expect_op(",");
        if (is_op("]")) break;
        e->args.push_back(parse_expression(true));
      }
      expect_op("]");
      return e;
    }
    if (accept_op("{")) {
      auto e = make(Expr::DictLit, line);
      while (!is_op("}")) {
        if (!e->args.empty()) expect_op(",");
        if (is_op("}")) break;
        e->args.push_back(parse_expression(true));
        expect_op(":");
        e->args.push_back(parse_expression(true));
      }
      expect_op("}");
      return e;
    }
    fail(line, "unexpected " + describe(t));
  }

  ExprPtr parse_postfix(ExprPtr node) {
    while (true) {
      int line = cur().line;
      if (is_op(".")) {
        ++i_;
        if (cur().type == Tok::Name) {
          auto e = make(Expr::Attr, line);
          e->name = t_[i_++].text;
          e->args.push_back(std::move(node));
          node = std::move(e);
        } else if (cur().type == Tok::Int) {
          auto e = make(Expr::Item, line);
          e->args.push_back(std::move(node));
          auto idx = make(Expr::Literal, line);
          idx->value = t_[i_++].value;
          e->args.push_back(std::move(idx));
          node = std::move(e);
        } else {
          fail(line, "expected an attribute name after '.', got " + describe(cur()));
        }
      } else if (is_op("[")) {
        ++i_;
        node = parse_subscript(std::move(node), line);
      } else if (is_op("(")) {
        node = parse_call(std::move(node));
      } else {
        return node;
      }
    }
  }

  ExprPtr parse_subscript(ExprPtr obj, int line) {
    // Either an index expression or a slice [start:stop:step] (each part optional).
    ExprPtr parts[3];
    bool slice = false;
    auto at_end = [&] { return is_op("]") || is_op(":"); };
    if (!is_op(":")) parts[0] = parse_expression(true);
    if (accept_op(":")) {
      slice = true;
      if (!at_end()) parts[1] = parse_expression(true);
      if (accept_op(":") && !is_op("]")) parts[2] = parse_expression(true);
    }
    if (is_op(",")) unsupported(cur().line, "tuple subscript");
    expect_op("]");
    auto e = make(slice ? Expr::Slice : Expr::Item, line);
    e->args.push_back(std::move(obj));
    if (slice) {
      for (auto& p : parts) e->args.push_back(std::move(p));
    } else {
      e->args.push_back(std::move(parts[0]));
    }
    return e;
  }

  void parse_call_args(Expr& e) {
    expect_op("(");
    bool first = true;
    while (!is_op(")")) {
      if (!first) expect_op(",");
      first = false;
      if (is_op(")")) break;
      if (is_op("*") || is_op("**")) unsupported(cur().line, "*args/**kwargs in a call");
      if (cur().type == Tok::Name && peek().type == Tok::Op && peek().text == "=") {
        std::string key = cur().text;
        i_ += 2;
        e.kwargs.emplace_back(key, parse_expression(true));
      } else {
        if (!e.kwargs.empty()) fail(cur().line, "positional argument after keyword argument");
        e.args.push_back(parse_expression(true));
      }
    }
    expect_op(")");
  }

  ExprPtr parse_call(ExprPtr callee) {
    auto e = make(Expr::Call, cur().line);
    e->args.push_back(std::move(callee));
    parse_call_args(*e);
    return e;
  }

  ExprPtr parse_filter_expr(ExprPtr node) {
    while (true) {
      if (is_op("|")) {
        node = parse_filter_chain(std::move(node));
      } else if (is_name("is")) {
        node = parse_test(std::move(node));
      } else if (is_op("(")) {
        node = parse_call(std::move(node));
      } else {
        return node;
      }
    }
  }

  // One or more "| name(args)" (the first without '|' when first_has_pipe is false).
  ExprPtr parse_filter_chain(ExprPtr subject, bool first_has_pipe = true) {
    bool first = true;
    while ((first && !first_has_pipe) || is_op("|")) {
      if (!(first && !first_has_pipe)) ++i_;
      first = false;
      int line = cur().line;
      std::string name = expect_name();
      if (!known_filters().count(name)) unsupported(line, "filter '" + name + "'");
      auto e = make(Expr::Filter, line);
      e->name = name;
      e->args.push_back(std::move(subject));
      if (is_op("(")) parse_call_args(*e);
      subject = std::move(e);
    }
    return subject;
  }

  ExprPtr parse_test(ExprPtr subject) {
    int line = cur().line;
    ++i_;  // "is"
    bool negated = accept_name("not");
    std::string name;
    if (cur().type == Tok::Name) {
      name = t_[i_++].text;
    } else if (cur().type == Tok::Op && (cur().text == "==" || cur().text == "!=" || cur().text == "<" ||
                                         cur().text == ">" || cur().text == "<=" || cur().text == ">=")) {
      name = t_[i_++].text;
    } else {
      fail(line, "expected a test name after 'is', got " + describe(cur()));
    }
    if (!known_tests().count(name)) unsupported(line, "test '" + name + "'");
    auto e = make(Expr::Test, line);
    e->name = name;
    e->negated = negated;
    e->args.push_back(std::move(subject));
    if (is_op("(")) {
      parse_call_args(*e);
    } else if ((cur().type == Tok::Name || cur().type == Tok::String || cur().type == Tok::Int ||
                cur().type == Tok::Float || is_op("[") || is_op("{")) &&
               !is_name("else") && !is_name("or") && !is_name("and")) {
      if (is_name("is")) fail(cur().line, "You cannot chain multiple tests with is");
      e->args.push_back(parse_postfix(parse_primary()));
    }
    return e;
  }

  std::vector<Token> t_;
  size_t i_ = 0;
  const std::string& origin_;
  int loop_depth_ = 0;
  bool has_generation_ = false;
};

}  // namespace

struct Template::Program {
  std::string origin;
  Body body;
  bool has_generation = false;
};

namespace {

// ---- value operations -------------------------------------------------------------------------

bool is_integral(const Value& v) { return v.is_int() || v.is_bool(); }

[[noreturn]] void undefined_error(const Value& v) {
  value_error(v.undefined_hint().empty() ? std::string("value is undefined") : v.undefined_hint());
}

Value arith(const std::string& op, const Value& a, const Value& b) {
  if (a.is_undefined()) undefined_error(a);
  if (b.is_undefined()) undefined_error(b);
  auto type_err = [&]() -> Value {
    value_error("unsupported operand type(s) for ", op, ": '", a.type_name(), "' and '", b.type_name(), "'");
  };
  if (op == "+") {
    if (a.is_string() && b.is_string()) return Value(a.str() + b.str());
    if (a.is_list() && b.is_list()) {
      ValueList l = a.list();
      l.insert(l.end(), b.list().begin(), b.list().end());
      return Value(std::move(l));
    }
    if (a.is_string() || b.is_string()) {
      if (a.is_string()) value_error("can only concatenate str (not \"", b.type_name(), "\") to str");
      return type_err();
    }
  }
  if (op == "*") {
    const Value* seq = a.is_string() || a.is_list() ? &a : (b.is_string() || b.is_list()) ? &b : nullptr;
    const Value* cnt = seq == &a ? &b : &a;
    if (seq) {
      if (!is_integral(*cnt)) value_error("can't multiply sequence by non-int of type '", cnt->type_name(), "'");
      int64_t n = std::max<int64_t>(0, cnt->as_int());
      if (seq->is_string()) {
        std::string out;
        for (int64_t i = 0; i < n; ++i) out += seq->str();
        return Value(std::move(out));
      }
      ValueList out;
      for (int64_t i = 0; i < n; ++i) out.insert(out.end(), seq->list().begin(), seq->list().end());
      return Value(std::move(out));
    }
  }
  if (op == "%" && a.is_string()) value_error("unsupported: printf-style string formatting with '%'");
  if (!a.is_number() || !b.is_number()) return type_err();
  bool ints = is_integral(a) && is_integral(b);
  if (ints) {
    int64_t x = a.as_int(), y = b.as_int();
    if (op == "+") return Value(x + y);
    if (op == "-") return Value(x - y);
    if (op == "*") return Value(x * y);
    if (op == "/") {
      if (y == 0) value_error("division by zero");
      return Value(static_cast<double>(x) / static_cast<double>(y));
    }
    if (op == "//" || op == "%") {
      if (y == 0) value_error("integer division or modulo by zero");
      int64_t q = x / y, r = x % y;
      if (r != 0 && ((r < 0) != (y < 0))) {
        --q;
        r += y;
      }
      return Value(op == "//" ? q : r);
    }
    if (op == "**") {
      if (y >= 0) {
        int64_t r = 1;
        for (int64_t i = 0; i < y; ++i) r *= x;
        return Value(r);
      }
      return Value(std::pow(static_cast<double>(x), static_cast<double>(y)));
    }
  }
  double x = a.as_float(), y = b.as_float();
  if (op == "+") return Value(x + y);
  if (op == "-") return Value(x - y);
  if (op == "*") return Value(x * y);
  if (op == "/") {
    if (y == 0) value_error("float division by zero");
    return Value(x / y);
  }
  if (op == "//" || op == "%") {
    if (y == 0) value_error("float divmod()");
    double m = std::fmod(x, y);
    if (m != 0 && ((m < 0) != (y < 0))) m += y;
    if (op == "%") return Value(m);
    return Value(std::floor((x - m) / y + 0.5));
  }
  if (op == "**") return Value(std::pow(x, y));
  return type_err();
}

// Python <, for sorting and comparisons. Returns -1, 0, 1.
int compare_values(const Value& a, const Value& b) {
  if (a.is_number() && b.is_number()) {
    if (is_integral(a) && is_integral(b)) return a.as_int() < b.as_int() ? -1 : a.as_int() > b.as_int();
    double x = a.as_float(), y = b.as_float();
    return x < y ? -1 : x > y;
  }
  if (a.is_string() && b.is_string()) {
    int c = a.str().compare(b.str());
    return c < 0 ? -1 : c > 0;
  }
  if (a.is_list() && b.is_list()) {
    const auto &x = a.list(), &y = b.list();
    for (size_t i = 0; i < x.size() && i < y.size(); ++i) {
      if (x[i].equals(y[i])) continue;
      return compare_values(x[i], y[i]);
    }
    return x.size() < y.size() ? -1 : x.size() > y.size();
  }
  if (a.is_undefined()) undefined_error(a);
  if (b.is_undefined()) undefined_error(b);
  value_error("'<' not supported between instances of '", a.type_name(), "' and '", b.type_name(), "'");
}

bool contains(const Value& container, const Value& item) {
  switch (container.kind()) {
    case Value::Kind::Undefined: return false;
    case Value::Kind::String:
      if (!item.is_string()) value_error("'in <string>' requires string as left operand, not ", item.type_name());
      return container.str().find(item.str()) != std::string::npos;
    case Value::Kind::List:
      for (const auto& v : container.list())
        if (v.equals(item)) return true;
      return false;
    case Value::Kind::Dict:
      return item.is_string() && container.dict().find(item.str()) != nullptr;
    default: value_error("argument of type '", container.type_name(), "' is not iterable");
  }
}

bool compare_op(const std::string& op, const Value& a, const Value& b) {
  if (op == "==") return a.equals(b);
  if (op == "!=") return !a.equals(b);
  if (op == "in") return contains(b, a);
  if (op == "notin") return !contains(b, a);
  int c = compare_values(a, b);
  if (op == "<") return c < 0;
  if (op == ">") return c > 0;
  if (op == "<=") return c <= 0;
  return c >= 0;
}

// Items of an iterable: list items, string characters, dict keys; Undefined iterates as empty.
ValueList iterate(const Value& v) {
  switch (v.kind()) {
    case Value::Kind::Undefined: return {};
    case Value::Kind::List: return v.list();
    case Value::Kind::String: {
      ValueList out;
      std::string s;
      for (char32_t c : utf8::decode(v.str())) {
        s.clear();
        utf8::append(s, c);
        out.emplace_back(s);
      }
      return out;
    }
    case Value::Kind::Dict: {
      ValueList out;
      for (const auto& kv : v.dict().items) out.emplace_back(kv.first);
      return out;
    }
    default: value_error("'", v.type_name(), "' object is not iterable");
  }
}

int64_t py_len(const Value& v) {
  switch (v.kind()) {
    case Value::Kind::Undefined: return 0;
    case Value::Kind::String: return static_cast<int64_t>(utf8::length(v.str()));
    case Value::Kind::List: return static_cast<int64_t>(v.list().size());
    case Value::Kind::Dict: return static_cast<int64_t>(v.dict().items.size());
    default: value_error("object of type '", v.type_name(), "' has no len()");
  }
}

// Python slice indices for a sequence of length n.
std::vector<int64_t> slice_indices(int64_t n, const Value& start, const Value& stop, const Value& step) {
  auto as_opt = [](const Value& v, const char* what) -> std::optional<int64_t> {
    if (v.is_none() || v.is_undefined()) return std::nullopt;
    if (!is_integral(v)) value_error("slice indices must be integers or None, not ", v.type_name(), " (", what, ")");
    return v.as_int();
  };
  int64_t st = as_opt(step, "step").value_or(1);
  if (st == 0) value_error("slice step cannot be zero");
  auto clamp = [&](std::optional<int64_t> x, int64_t dflt) {
    if (!x) return dflt;
    int64_t i = *x;
    if (i < 0) i += n;
    if (st > 0) return std::clamp<int64_t>(i, 0, n);
    return std::clamp<int64_t>(i, -1, n - 1);
  };
  int64_t b = clamp(as_opt(start, "start"), st > 0 ? 0 : n - 1);
  int64_t e = clamp(as_opt(stop, "stop"), st > 0 ? n : -1);
  std::vector<int64_t> idx;
  for (int64_t i = b; st > 0 ? i < e : i > e; i += st) idx.push_back(i);
  return idx;
}

Value do_slice(const Value& obj, const Value& start, const Value& stop, const Value& step) {
  if (obj.is_undefined()) undefined_error(obj);
  if (obj.is_string()) {
    if (is_ascii(obj.str())) {
      std::string out;
      for (int64_t i : slice_indices(static_cast<int64_t>(obj.str().size()), start, stop, step)) out += obj.str()[i];
      return Value(std::move(out));
    }
    std::u32string u = utf8::decode(obj.str()), out;
    for (int64_t i : slice_indices(static_cast<int64_t>(u.size()), start, stop, step)) out += u[i];
    return Value(utf8::encode(out));
  }
  if (obj.is_list()) {
    ValueList out;
    for (int64_t i : slice_indices(static_cast<int64_t>(obj.list().size()), start, stop, step))
      out.push_back(obj.list()[i]);
    return obj.is_tuple() ? Value::tuple(std::move(out)) : Value(std::move(out));
  }
  value_error("'", obj.type_name(), "' object is not subscriptable");
}

// ---- arguments --------------------------------------------------------------------------------

// Binds positional and keyword arguments to parameter names (like a Python signature).
struct Bound {
  std::vector<Value> v;
  std::vector<bool> given;
  const Value& operator[](size_t i) const { return v[i]; }
  bool has(size_t i) const { return given[i]; }
};

Bound bind(const CallArgs& a, std::initializer_list<const char*> names, const std::string& fname) {
  Bound b;
  b.v.resize(names.size());
  b.given.assign(names.size(), false);
  if (a.args.size() > names.size())
    value_error(fname, "() takes at most ", names.size(), " arguments (", a.args.size(), " given)");
  for (size_t i = 0; i < a.args.size(); ++i) {
    b.v[i] = a.args[i];
    b.given[i] = true;
  }
  for (const auto& [k, val] : a.kwargs) {
    size_t i = 0;
    for (const char* n : names) {
      if (k == n) break;
      ++i;
    }
    if (i == names.size()) value_error(fname, "() got an unexpected keyword argument '", k, "'");
    b.v[i] = val;
    b.given[i] = true;
  }
  return b;
}

const std::string& need_string(const Value& v, const std::string& what) {
  if (v.is_undefined()) undefined_error(v);
  if (!v.is_string()) value_error(what, " must be a string, not ", v.type_name());
  return v.str();
}

// ---- string methods ---------------------------------------------------------------------------

ValueList py_split(const std::string& s, const Value& sep, int64_t maxsplit, bool from_right) {
  ValueList out;
  if (sep.is_none() || sep.is_undefined()) {
    std::u32string u = utf8::decode(s);
    std::vector<std::pair<size_t, size_t>> words;
    size_t i = 0;
    while (i < u.size()) {
      while (i < u.size() && utf8::is_space(u[i])) ++i;
      if (i >= u.size()) break;
      size_t j = i;
      while (j < u.size() && !utf8::is_space(u[j])) ++j;
      words.emplace_back(i, j);
      i = j;
    }
    if (maxsplit >= 0 && static_cast<int64_t>(words.size()) > maxsplit + 1) {
      // The unsplit remainder keeps its inner whitespace (trailing/leading stripped on its side).
      if (!from_right) {
        size_t rest = words[maxsplit].first;
        size_t end = u.size();
        while (end > rest && utf8::is_space(u[end - 1])) --end;
        for (int64_t k = 0; k < maxsplit; ++k)
          out.emplace_back(utf8::encode(std::u32string_view(u).substr(words[k].first, words[k].second - words[k].first)));
        out.emplace_back(utf8::encode(std::u32string_view(u).substr(rest, end - rest)));
        return out;
      }
      size_t first_kept = words.size() - maxsplit;
      size_t begin = 0;
      while (begin < u.size() && utf8::is_space(u[begin])) ++begin;
      out.emplace_back(utf8::encode(std::u32string_view(u).substr(begin, words[first_kept - 1].second - begin)));
      for (size_t k = first_kept; k < words.size(); ++k)
        out.emplace_back(utf8::encode(std::u32string_view(u).substr(words[k].first, words[k].second - words[k].first)));
      return out;
    }
    for (auto [b, e] : words) out.emplace_back(utf8::encode(std::u32string_view(u).substr(b, e - b)));
    return out;
  }
  const std::string& d = need_string(sep, "separator");
  if (d.empty()) value_error("empty separator");
  std::vector<std::string> parts;
  if (!from_right) {
    size_t start = 0;
    int64_t n = 0;
    while (maxsplit < 0 || n < maxsplit) {
      size_t p = s.find(d, start);
      if (p == std::string::npos) break;
      parts.push_back(s.substr(start, p - start));
      start = p + d.size();
      ++n;
    }
    parts.push_back(s.substr(start));
  } else {
    size_t end = s.size();
    int64_t n = 0;
    std::vector<std::string> rev;
    while (maxsplit < 0 || n < maxsplit) {
      if (end < d.size()) break;
      size_t p = s.rfind(d, end - d.size());
      if (p == std::string::npos) break;
      rev.push_back(s.substr(p + d.size(), end - p - d.size()));
      end = p;
      ++n;
    }
    rev.push_back(s.substr(0, end));
    parts.assign(rev.rbegin(), rev.rend());
  }
  for (auto& p : parts) out.emplace_back(std::move(p));
  return out;
}

std::string py_replace(const std::string& s, const std::string& old, const std::string& neu, int64_t count) {
  std::string out;
  if (old.empty()) {  // inserts between characters (and at both ends)
    std::u32string u = utf8::decode(s);
    int64_t n = 0;
    for (size_t i = 0; i <= u.size(); ++i) {
      if (count < 0 || n < count) {
        out += neu;
        ++n;
      }
      if (i < u.size()) utf8::append(out, u[i]);
    }
    return out;
  }
  size_t start = 0;
  int64_t n = 0;
  while (count < 0 || n < count) {
    size_t p = s.find(old, start);
    if (p == std::string::npos) break;
    out.append(s, start, p - start);
    out += neu;
    start = p + old.size();
    ++n;
  }
  out.append(s, start, std::string::npos);
  return out;
}

std::string py_title(const std::string& s) {  // str.title()
  std::u32string u = utf8::decode(s);
  bool prev = false;
  for (auto& c : u) {
    bool alpha = cp_alpha(c);
    if (alpha) c = prev ? cp_lower(c) : cp_upper(c);
    prev = alpha;
  }
  return utf8::encode(u);
}

std::string py_capitalize(const std::string& s) {
  std::u32string u = utf8::decode(s);
  for (size_t i = 0; i < u.size(); ++i) u[i] = i == 0 ? cp_upper(u[i]) : cp_lower(u[i]);
  return utf8::encode(u);
}

bool affix_match(const std::string& s, const Value& affix, bool prefix) {
  auto one = [&](const Value& a) {
    const std::string& x = need_string(a, prefix ? "startswith argument" : "endswith argument");
    if (x.size() > s.size()) return false;
    return prefix ? s.compare(0, x.size(), x) == 0 : s.compare(s.size() - x.size(), x.size(), x) == 0;
  };
  if (affix.is_list()) {
    for (const auto& a : affix.list())
      if (one(a)) return true;
    return false;
  }
  return one(affix);
}

Value string_method(const std::string& name, const Value& self, CallArgs& a) {
  const std::string& s = self.str();
  auto chars_arg = [&](const Bound& b) -> const std::string* {
    if (!b.has(0) || b[0].is_none()) return nullptr;
    return &need_string(b[0], name + " argument");
  };
  if (name == "strip" || name == "lstrip" || name == "rstrip") {
    Bound b = bind(a, {"chars"}, name);
    return Value(str_strip(s, chars_arg(b), name != "rstrip", name != "lstrip"));
  }
  if (name == "split" || name == "rsplit") {
    Bound b = bind(a, {"sep", "maxsplit"}, name);
    int64_t maxsplit = b.has(1) ? b[1].as_int() : -1;
    return Value(py_split(s, b.has(0) ? b[0] : Value(nullptr), maxsplit, name == "rsplit"));
  }
  if (name == "startswith" || name == "endswith") {
    Bound b = bind(a, {"prefix"}, name);
    if (!b.has(0)) value_error(name, "() takes at least 1 argument (0 given)");
    return Value(affix_match(s, b[0], name == "startswith"));
  }
  if (name == "upper") return Value(str_upper(s));
  if (name == "lower") return Value(str_lower(s));
  if (name == "title") return Value(py_title(s));
  if (name == "capitalize") return Value(py_capitalize(s));
  if (name == "replace") {
    Bound b = bind(a, {"old", "new", "count"}, name);
    return Value(py_replace(s, need_string(b[0], "replace() argument 1"), need_string(b[1], "replace() argument 2"),
                            b.has(2) ? b[2].as_int() : -1));
  }
  if (name == "find" || name == "rfind" || name == "index" || name == "rindex" || name == "count") {
    Bound b = bind(a, {"sub"}, name);
    const std::string& sub = need_string(b[0], name + "() argument");
    if (name == "count") {
      if (sub.empty()) return Value(static_cast<int64_t>(utf8::length(s) + 1));
      int64_t n = 0;
      for (size_t p = s.find(sub); p != std::string::npos; p = s.find(sub, p + sub.size())) ++n;
      return Value(n);
    }
    size_t p = (name == "find" || name == "index") ? s.find(sub) : s.rfind(sub);
    if (p == std::string::npos) {
      if (name == "index" || name == "rindex") value_error("substring not found");
      return Value(static_cast<int64_t>(-1));
    }
    return Value(static_cast<int64_t>(utf8::length(std::string_view(s).substr(0, p))));
  }
  if (name == "join") {
    Bound b = bind(a, {"iterable"}, name);
    std::string out;
    bool first = true;
    for (const auto& v : iterate(b[0])) {
      if (!first) out += s;
      first = false;
      out += need_string(v, "sequence item");
    }
    return Value(std::move(out));
  }
  if (name == "splitlines") {
    bind(a, {}, name);
    ValueList out;
    size_t start = 0;
    for (size_t i = 0; i < s.size(); ++i) {
      if (s[i] == '\n' || s[i] == '\r') {
        out.emplace_back(s.substr(start, i - start));
        if (s[i] == '\r' && i + 1 < s.size() && s[i + 1] == '\n') ++i;
        start = i + 1;
      }
    }
    if (start < s.size()) out.emplace_back(s.substr(start));
    return Value(std::move(out));
  }
  if (name == "isdigit" || name == "isalpha" || name == "isspace" || name == "isalnum" || name == "isupper" ||
      name == "islower") {
    bind(a, {}, name);
    std::u32string u = utf8::decode(s);
    if (u.empty()) return Value(false);
    if (name == "isupper" || name == "islower") {
      bool cased = false;
      for (char32_t c : u) {
        if (cp_upper(c) != cp_lower(c)) {
          cased = true;
          if ((name == "isupper") != (cp_upper(c) == c)) return Value(false);
        }
      }
      return Value(cased);
    }
    for (char32_t c : u) {
      bool ok = name == "isdigit" ? cp_digit(c)
                : name == "isalpha" ? cp_alpha(c)
                : name == "isspace" ? utf8::is_space(c)
                                    : (cp_alpha(c) || cp_digit(c));
      if (!ok) return Value(false);
    }
    return Value(true);
  }
  value_error("unsupported string method '", name, "'");
}

bool is_string_method(const std::string& n) {
  static const std::unordered_set<std::string> s = {
      "strip", "lstrip", "rstrip", "split", "rsplit", "startswith", "endswith", "upper", "lower", "title",
      "capitalize", "replace", "find", "rfind", "index", "rindex", "count", "join", "splitlines", "isdigit",
      "isalpha", "isspace", "isalnum", "isupper", "islower"};
  return s.count(n) > 0;
}

bool is_unsupported_method(const Value& obj, const std::string& n) {
  if (obj.is_string()) {
    static const std::unordered_set<std::string> s = {"format", "format_map", "encode", "center", "ljust", "rjust",
                                                      "zfill", "partition", "rpartition", "expandtabs", "translate",
                                                      "casefold", "swapcase", "removeprefix", "removesuffix"};
    return s.count(n) > 0;
  }
  if (obj.is_list()) {
    static const std::unordered_set<std::string> s = {"append", "extend", "insert", "pop", "remove", "sort",
                                                      "reverse", "clear", "copy"};
    return s.count(n) > 0;
  }
  if (obj.is_dict()) {
    static const std::unordered_set<std::string> s = {"pop", "popitem", "setdefault", "update", "clear", "fromkeys"};
    return s.count(n) > 0;
  }
  return false;
}

Value dict_items(const Value& d) {
  ValueList out;
  for (const auto& [k, v] : d.dict().items) out.push_back(Value::tuple({Value(k), v}));
  return Value(std::move(out));
}

Value bound_method(const Value& obj, const std::string& name) {
  if (obj.is_string() && is_string_method(name))
    return Value::function("str." + name, [obj, name](CallArgs& a) { return string_method(name, obj, a); });
  if (obj.is_dict()) {
    if (name == "items")
      return Value::function("dict.items", [obj](CallArgs& a) {
        bind(a, {}, "items");
        return dict_items(obj);
      });
    if (name == "keys" || name == "values")
      return Value::function("dict." + name, [obj, name](CallArgs& a) {
        bind(a, {}, name);
        ValueList out;
        for (const auto& [k, v] : obj.dict().items) out.push_back(name == "keys" ? Value(k) : v);
        return Value(std::move(out));
      });
    if (name == "get")
      return Value::function("dict.get", [obj](CallArgs& a) {
        Bound b = bind(a, {"key", "default"}, "get");
        if (b[0].is_string()) {
          if (const Value* v = obj.dict().find(b[0].str())) return *v;
        }
        return b.has(1) ? b[1] : Value(nullptr);
      });
    if (name == "copy")
      return Value::function("dict.copy", [obj](CallArgs& a) {
        bind(a, {}, "copy");
        return Value(ValueDict(obj.dict()));
      });
  }
  if (obj.is_list() && (name == "index" || name == "count"))
    return Value::function("list." + name, [obj, name](CallArgs& a) {
      Bound b = bind(a, {"value"}, name);
      int64_t n = 0;
      for (size_t i = 0; i < obj.list().size(); ++i) {
        if (obj.list()[i].equals(b[0])) {
          if (name == "index") return Value(static_cast<int64_t>(i));
          ++n;
        }
      }
      if (name == "index") value_error(b[0].repr(), " is not in list");
      return Value(n);
    });
  if (is_unsupported_method(obj, name))
    value_error("unsupported: ", obj.type_name(), ".", name, "() (chat templates cannot modify values or use it)");
  return Value();
}

std::string type_object(const Value& v) { return v.type_name() + " object"; }

// obj.name: methods first, then items (jinja2's environment.getattr).
Value get_attr(const Value& obj, const std::string& name) {
  if (obj.is_undefined()) undefined_error(obj);
  Value m = bound_method(obj, name);
  if (!m.is_undefined()) return m;
  if (obj.is_dict() || obj.is_namespace()) {
    if (const Value* v = obj.dict().find(name)) return *v;
  }
  return Value::undefined("'" + type_object(obj) + "' has no attribute '" + name + "'");
}

// obj[key]: items first, then attributes (jinja2's environment.getitem).
Value get_item(const Value& obj, const Value& key) {
  if (obj.is_undefined()) undefined_error(obj);
  if ((obj.is_list() || obj.is_string()) && is_integral(key)) {
    int64_t i = key.as_int();
    if (obj.is_list()) {
      int64_t n = static_cast<int64_t>(obj.list().size());
      if (i < 0) i += n;
      if (i >= 0 && i < n) return obj.list()[i];
      return Value::undefined("list object has no element " + std::to_string(key.as_int()));
    }
    std::u32string u = utf8::decode(obj.str());
    int64_t n = static_cast<int64_t>(u.size());
    if (i < 0) i += n;
    if (i >= 0 && i < n) return Value(utf8::encode(std::u32string_view(u).substr(i, 1)));
    return Value::undefined("str object has no element " + std::to_string(key.as_int()));
  }
  if ((obj.is_dict() || obj.is_namespace()) && key.is_string()) {
    if (const Value* v = obj.dict().find(key.str())) return *v;
  }
  if (key.is_string()) {
    Value m = bound_method(obj, key.str());
    if (!m.is_undefined()) return m;
    return Value::undefined("'" + type_object(obj) + "' has no attribute '" + key.str() + "'");
  }
  return Value::undefined("'" + type_object(obj) + "' has no element " + key.repr());
}

// "a.b.0" attribute paths of selectattr/map/sort (jinja2's make_attrgetter, items first).
Value get_path(const Value& obj, const Value& path) {
  if (is_integral(path)) return get_item(obj, path);
  Value cur = obj;
  const std::string& p = need_string(path, "attribute");
  size_t start = 0;
  while (true) {
    size_t dot = p.find('.', start);
    std::string part = p.substr(start, dot == std::string::npos ? std::string::npos : dot - start);
    bool digits = !part.empty() && std::all_of(part.begin(), part.end(), [](char c) { return std::isdigit(static_cast<unsigned char>(c)); });
    cur = digits ? get_item(cur, Value(static_cast<int64_t>(std::stoll(part)))) : get_item(cur, Value(part));
    if (dot == std::string::npos) break;
    start = dot + 1;
  }
  return cur;
}

// ---- renderer ---------------------------------------------------------------------------------

struct Frame {
  std::unordered_map<std::string, Value> vars;
  std::shared_ptr<Frame> parent;
  const Value* lookup(const std::string& name) const {
    for (const Frame* f = this; f; f = f->parent.get()) {
      auto it = f->vars.find(name);
      if (it != f->vars.end()) return &it->second;
    }
    return nullptr;
  }
};
using FramePtr = std::shared_ptr<Frame>;

enum class Flow { Normal, Break, Continue };

class Renderer {
 public:
  Renderer(const Template::Program& p) : prog_(p) {}

  Template::Output run(const Template::Context& vars) {
    auto globals = std::make_shared<Frame>();
    install_globals(*globals);
    for (const auto& [k, v] : vars) globals->vars[k] = v;
    auto top = std::make_shared<Frame>();
    top->parent = globals;
    Template::Output result;
    out_ = &result.text;
    main_ = &result.text;
    spans_ = &result.generation_spans;
    exec_body(prog_.body, top);
    return result;
  }

 private:
  template <class... A>
  [[noreturn]] void fail(int line, A&&... a) const {
    user_error(prog_.origin, " line ", line, ": ", std::forward<A>(a)...);
  }

  void install_globals(Frame& g) {
    g.vars["range"] = Value::function("range", [](CallArgs& a) {
      if (!a.kwargs.empty() || a.args.empty() || a.args.size() > 3) value_error("range() takes 1 to 3 arguments");
      for (const auto& v : a.args)
        if (!is_integral(v)) value_error("'", v.type_name(), "' object cannot be interpreted as an integer");
      int64_t start = 0, stop, step = 1;
      if (a.args.size() == 1) {
        stop = a.args[0].as_int();
      } else {
        start = a.args[0].as_int();
        stop = a.args[1].as_int();
        if (a.args.size() == 3) step = a.args[2].as_int();
      }
      if (step == 0) value_error("range() arg 3 must not be zero");
      ValueList out;
      for (int64_t i = start; step > 0 ? i < stop : i > stop; i += step) {
        if (out.size() >= 100000) value_error("Range too big. The sandbox blocks ranges larger than MAX_RANGE (100000).");
        out.emplace_back(i);
      }
      return Value(std::move(out));
    });
    g.vars["namespace"] = Value::function("namespace", [](CallArgs& a) {
      ValueDict d;
      for (const auto& v : a.args) {
        if (!v.is_dict()) value_error("namespace() positional argument must be a dict");
        for (const auto& kv : v.dict().items) d.set(kv.first, kv.second);
      }
      for (const auto& [k, v] : a.kwargs) d.set(k, v);
      return Value::make_namespace(std::move(d));
    });
    g.vars["dict"] = Value::function("dict", [](CallArgs& a) {
      ValueDict d;
      for (const auto& v : a.args) {
        if (!v.is_dict()) value_error("dict() positional argument must be a dict");
        for (const auto& kv : v.dict().items) d.set(kv.first, kv.second);
      }
      for (const auto& [k, v] : a.kwargs) d.set(k, v);
      return Value(std::move(d));
    });
    g.vars["raise_exception"] = Value::function("raise_exception", [](CallArgs& a) -> Value {
      value_error(a.args.empty() ? std::string("raise_exception() called") : a.args[0].to_string());
    });
    g.vars["strftime_now"] = Value::function("strftime_now", [](CallArgs& a) {
      Bound b = bind(a, {"format"}, "strftime_now");
      const std::string& fmt = need_string(b[0], "strftime_now format");
      std::time_t now = std::time(nullptr);
      std::tm tm{};
      localtime_r(&now, &tm);
      char buf[512];
      size_t n = std::strftime(buf, sizeof buf, fmt.c_str(), &tm);
      return Value(std::string(buf, n));
    });
  }

  // ---- statements ----

  Flow exec_body(const Body& body, const FramePtr& f) {
    for (const auto& s : body) {
      Flow fl = exec(*s, f);
      if (fl != Flow::Normal) return fl;
    }
    return Flow::Normal;
  }

  void assign(const Stmt& s, const Value& v, Frame& f) {
    if (s.targets.size() == 1) {
      f.vars[s.targets[0]] = v;
      return;
    }
    ValueList items = iterate(v);
    if (items.size() != s.targets.size())
      value_error("cannot unpack ", items.size(), " values into ", s.targets.size(), " names");
    for (size_t i = 0; i < items.size(); ++i) f.vars[s.targets[i]] = items[i];
  }

  Flow exec(const Stmt& s, const FramePtr& f) {
    try {
      return exec_impl(s, f);
    } catch (const ValueError& e) {
      fail(s.line, e.what());
    }
  }

  Flow exec_impl(const Stmt& s, const FramePtr& f) {
    switch (s.kind) {
      case Stmt::Text: *out_ += s.text; return Flow::Normal;
      case Stmt::Print: *out_ += eval(*s.expr, f).to_string(); return Flow::Normal;
      case Stmt::If:
        for (const auto& [test, body] : s.branches) {
          if (!test || eval(*test, f).truthy()) return exec_body(body, f);
        }
        return Flow::Normal;
      case Stmt::For: return exec_for(s, f);
      case Stmt::Set: {
        Value v = eval(*s.expr, f);
        if (!s.attr.empty()) {
          const Value* ns = f->lookup(s.targets[0]);
          if (!ns || !ns->is_namespace()) fail(s.line, "cannot assign attribute on non-namespace object");
          if (!s.attr.empty() && s.attr[0] == '_') fail(s.line, "cannot store underscore-prefixed attributes on a namespace");
          const_cast<Value*>(ns)->mutable_dict().set(s.attr, v);
        } else {
          assign(s, v, *f);
        }
        return Flow::Normal;
      }
      case Stmt::SetBlock: {
        std::string buf = capture(s.body, f);
        Value v(std::move(buf));
        if (s.filter) v = apply_filter_chain(*s.filter, v, f);
        f->vars[s.targets[0]] = v;
        return Flow::Normal;
      }
      case Stmt::Macro: {
        const Stmt* m = &s;
        FramePtr closure = f;
        f->vars[s.text] = Value::function(s.text, [this, m, closure](CallArgs& a) { return call_macro(*m, closure, a); });
        return Flow::Normal;
      }
      case Stmt::Break: return Flow::Break;
      case Stmt::Continue: return Flow::Continue;
      case Stmt::Generation: {
        size_t begin = out_->size();
        Flow fl = exec_body(s.body, f);
        if (out_ == main_) spans_->emplace_back(begin, out_->size());
        return fl;
      }
      case Stmt::FilterBlock: {
        Value v(capture(s.body, f));
        *out_ += apply_filter_chain(*s.filter, v, f).to_string();
        return Flow::Normal;
      }
      case Stmt::With: {
        auto inner = std::make_shared<Frame>();
        inner->parent = f;
        for (size_t i = 0; i < s.targets.size(); ++i) inner->vars[s.targets[i]] = eval(*s.defaults[i], f);
        return exec_body(s.body, inner);
      }
    }
    return Flow::Normal;
  }

  std::string capture(const Body& body, const FramePtr& f) {
    std::string buf;
    std::string* saved = out_;
    out_ = &buf;
    auto inner = std::make_shared<Frame>();
    inner->parent = f;
    try {
      exec_body(body, inner);
    } catch (...) {
      out_ = saved;
      throw;
    }
    out_ = saved;
    return buf;
  }

  Flow exec_for(const Stmt& s, const FramePtr& f) {
    ValueList items = iterate(eval(*s.expr, f));
    if (s.cond) {
      ValueList kept;
      for (auto& it : items) {
        auto probe = std::make_shared<Frame>();
        probe->parent = f;
        assign(s, it, *probe);
        if (eval(*s.cond, probe).truthy()) kept.push_back(std::move(it));
      }
      items = std::move(kept);
    }
    if (items.empty()) {
      if (!s.else_body.empty()) return exec_body(s.else_body, f);
      return Flow::Normal;
    }
    const int64_t n = static_cast<int64_t>(items.size());
    for (int64_t i = 0; i < n; ++i) {
      auto it_frame = std::make_shared<Frame>();
      it_frame->parent = f;
      assign(s, items[i], *it_frame);
      ValueDict loop;
      loop.items.reserve(12);
      loop.items.emplace_back("index", Value(i + 1));
      loop.items.emplace_back("index0", Value(i));
      loop.items.emplace_back("revindex", Value(n - i));
      loop.items.emplace_back("revindex0", Value(n - i - 1));
      loop.items.emplace_back("first", Value(i == 0));
      loop.items.emplace_back("last", Value(i == n - 1));
      loop.items.emplace_back("length", Value(n));
      loop.items.emplace_back("depth", Value(static_cast<int64_t>(1)));
      loop.items.emplace_back("depth0", Value(static_cast<int64_t>(0)));
      loop.items.emplace_back("previtem", i > 0 ? items[i - 1] : Value::undefined("there is no previous item"));
      loop.items.emplace_back("nextitem", i + 1 < n ? items[i + 1] : Value::undefined("there is no next item"));
      loop.items.emplace_back("cycle", Value::function("loop.cycle", [i](CallArgs& a) {
                                if (a.args.empty()) value_error("no items for cycling given");
                                return a.args[i % a.args.size()];
                              }));
      it_frame->vars["loop"] = Value(std::move(loop));
      Flow fl = exec_body(s.body, it_frame);
      if (fl == Flow::Break) break;
    }
    return Flow::Normal;
  }

  Value call_macro(const Stmt& m, const FramePtr& closure, CallArgs& a) {
    if (++depth_ > 200) {
      --depth_;
      value_error("macro recursion too deep");
    }
    auto f = std::make_shared<Frame>();
    f->parent = closure;
    if (a.args.size() > m.params.size())
      value_error("macro '", m.text, "' takes not more than ", m.params.size(), " argument(s)");
    std::vector<bool> given(m.params.size(), false);
    for (size_t i = 0; i < a.args.size(); ++i) {
      f->vars[m.params[i]] = a.args[i];
      given[i] = true;
    }
    for (const auto& [k, v] : a.kwargs) {
      auto it = std::find(m.params.begin(), m.params.end(), k);
      if (it == m.params.end()) value_error("macro '", m.text, "' takes no keyword argument '", k, "'");
      f->vars[k] = v;
      given[it - m.params.begin()] = true;
    }
    for (size_t i = 0; i < m.params.size(); ++i) {
      if (given[i]) continue;
      f->vars[m.params[i]] = m.defaults[i] ? eval(*m.defaults[i], f)
                                           : Value::undefined("parameter '" + m.params[i] + "' was not provided");
    }
    std::string buf;
    std::string* saved = out_;
    out_ = &buf;
    try {
      exec_body(m.body, f);
    } catch (...) {
      out_ = saved;
      --depth_;
      throw;
    }
    out_ = saved;
    --depth_;
    return Value(std::move(buf));
  }

  // ---- expressions ----

  Value eval(const Expr& e, const FramePtr& f) {
    try {
      return eval_impl(e, f);
    } catch (const ValueError& err) {
      fail(e.line, err.what());
    }
  }

  CallArgs eval_args(const Expr& e, const FramePtr& f, size_t skip) {
    CallArgs a;
    for (size_t i = skip; i < e.args.size(); ++i) a.args.push_back(eval(*e.args[i], f));
    for (const auto& [k, v] : e.kwargs) a.kwargs.emplace_back(k, eval(*v, f));
    return a;
  }

  Value eval_impl(const Expr& e, const FramePtr& f) {
    switch (e.kind) {
      case Expr::Literal: return e.value;
      case Expr::Name: {
        if (const Value* v = f->lookup(e.name)) return *v;
        return Value::undefined("'" + e.name + "' is undefined");
      }
      case Expr::ListLit: {
        ValueList l;
        l.reserve(e.args.size());
        for (const auto& a : e.args) l.push_back(eval(*a, f));
        return e.is_tuple ? Value::tuple(std::move(l)) : Value(std::move(l));
      }
      case Expr::DictLit: {
        ValueDict d;
        for (size_t i = 0; i + 1 < e.args.size(); i += 2) {
          Value k = eval(*e.args[i], f);
          if (!k.is_string()) value_error("unsupported: dict keys must be strings, got ", k.type_name());
          d.set(k.str(), eval(*e.args[i + 1], f));
        }
        return Value(std::move(d));
      }
      case Expr::Attr: return get_attr(eval(*e.args[0], f), e.name);
      case Expr::Item: return get_item(eval(*e.args[0], f), eval(*e.args[1], f));
      case Expr::Slice: {
        Value obj = eval(*e.args[0], f);
        Value parts[3];
        for (int k = 0; k < 3; ++k) parts[k] = e.args[k + 1] ? eval(*e.args[k + 1], f) : Value(nullptr);
        return do_slice(obj, parts[0], parts[1], parts[2]);
      }
      case Expr::Call: {
        Value callee = eval(*e.args[0], f);
        CallArgs a = eval_args(e, f, 1);
        if (callee.is_undefined()) undefined_error(callee);
        if (!callee.is_function()) value_error("'", callee.type_name(), "' object is not callable");
        return callee.fn().call(a);
      }
      case Expr::Filter: {
        Value subject = e.args[0] ? eval(*e.args[0], f) : Value();
        CallArgs a = eval_args(e, f, 1);
        return apply_filter(e.name, subject, a, f);
      }
      case Expr::Test: {
        Value subject = eval(*e.args[0], f);
        CallArgs a = eval_args(e, f, 1);
        bool r = apply_test(e.name, subject, a, f);
        return Value(e.negated ? !r : r);
      }
      case Expr::Not: return Value(!eval(*e.args[0], f).truthy());
      case Expr::Neg:
      case Expr::Pos: {
        Value v = eval(*e.args[0], f);
        if (v.is_undefined()) undefined_error(v);
        if (!v.is_number()) value_error("bad operand type for unary ", e.kind == Expr::Neg ? "-" : "+", ": '", v.type_name(), "'");
        if (e.kind == Expr::Pos) return is_integral(v) ? Value(v.as_int()) : v;
        return is_integral(v) ? Value(-v.as_int()) : Value(-v.as_float());
      }
      case Expr::Binary: return arith(e.name, eval(*e.args[0], f), eval(*e.args[1], f));
      case Expr::Concat: {
        std::string s;
        for (const auto& a : e.args) s += eval(*a, f).to_string();
        return Value(std::move(s));
      }
      case Expr::Compare: {
        Value l = eval(*e.args[0], f);
        for (size_t i = 0; i < e.ops.size(); ++i) {
          Value r = eval(*e.args[i + 1], f);
          if (!compare_op(e.ops[i], l, r)) return Value(false);
          l = std::move(r);
        }
        return Value(true);
      }
      case Expr::And: {
        Value l = eval(*e.args[0], f);
        return l.truthy() ? eval(*e.args[1], f) : l;
      }
      case Expr::Or: {
        Value l = eval(*e.args[0], f);
        return l.truthy() ? l : eval(*e.args[1], f);
      }
      case Expr::Cond: {
        if (eval(*e.args[0], f).truthy()) return eval(*e.args[1], f);
        if (e.args[2]) return eval(*e.args[2], f);
        return Value::undefined("the inline if-expression on line " + std::to_string(e.line) +
                                " evaluated to false and no else section was defined.");
      }
    }
    return Value();
  }

  // A parsed filter chain whose innermost subject is null: apply it to v.
  Value apply_filter_chain(const Expr& chain, const Value& v, const FramePtr& f) {
    if (chain.kind != Expr::Filter) return v;
    Value inner = chain.args[0] ? apply_filter_chain(*chain.args[0], v, f) : v;
    CallArgs a = eval_args(chain, f, 1);
    try {
      return apply_filter(chain.name, inner, a, f);
    } catch (const ValueError& err) {
      fail(chain.line, err.what());
    }
  }

  // ---- tests ----

  bool apply_test(const std::string& name, const Value& v, CallArgs& a, const FramePtr& f) {
    auto arg = [&](const char* what) -> const Value& {
      if (a.args.empty()) value_error("test '", name, "' needs an argument (", what, ")");
      return a.args[0];
    };
    if (name == "defined") return !v.is_undefined();
    if (name == "undefined") return v.is_undefined();
    if (name == "none") return v.is_none();
    if (name == "boolean") return v.is_bool();
    if (name == "true") return v.is_bool() && v.as_bool();
    if (name == "false") return v.is_bool() && !v.as_bool();
    if (name == "integer") return v.is_int();
    if (name == "float") return v.is_float();
    if (name == "number") return v.is_number();
    if (name == "string") return v.is_string();
    if (name == "mapping") return v.is_dict();
    if (name == "iterable") return v.is_string() || v.is_list() || v.is_dict() || v.is_undefined();
    if (name == "sequence") return v.is_string() || v.is_list() || v.is_dict();
    if (name == "callable") return v.is_function();
    if (name == "sameas") {  // Python "is": identity of singletons and small scalars
      const Value& o = arg("other");
      if (v.kind() != o.kind()) return false;
      return (v.is_none() || v.is_bool() || v.is_int() || v.is_undefined()) && v.equals(o);
    }
    if (name == "eq" || name == "equalto" || name == "==") return v.equals(arg("other"));
    if (name == "ne" || name == "!=") return !v.equals(arg("other"));
    if (name == "lt" || name == "lessthan" || name == "<") return compare_values(v, arg("other")) < 0;
    if (name == "le" || name == "<=") return compare_values(v, arg("other")) <= 0;
    if (name == "gt" || name == "greaterthan" || name == ">") return compare_values(v, arg("other")) > 0;
    if (name == "ge" || name == ">=") return compare_values(v, arg("other")) >= 0;
    if (name == "in") return contains(arg("container"), v);
    if (name == "odd" || name == "even" || name == "divisibleby") {
      if (v.is_undefined()) undefined_error(v);
      if (!is_integral(v)) value_error("test '", name, "' needs an integer, got ", v.type_name());
      int64_t x = v.as_int();
      if (name == "odd") return ((x % 2) + 2) % 2 == 1;
      if (name == "even") return x % 2 == 0;
      const Value& d = arg("divisor");
      if (!is_integral(d) || d.as_int() == 0) value_error("divisibleby needs a non-zero integer");
      return x % d.as_int() == 0;
    }
    if (name == "lower" || name == "upper") {
      std::string s = v.to_string();
      return name == "lower" ? str_lower(s) == s && str_upper(s) != s : str_upper(s) == s && str_lower(s) != s;
    }
    if (name == "filter") return known_filters().count(need_string(v, "filter name")) > 0;
    if (name == "test") return known_tests().count(need_string(v, "test name")) > 0;
    value_error("unsupported test '", name, "'");
  }

  // ---- filters ----

  Value apply_filter(const std::string& name, const Value& v, CallArgs& a, const FramePtr& f) {
    if (name == "default" || name == "d") {
      Bound b = bind(a, {"default_value", "boolean"}, name);
      bool boolean = b.has(1) && b[1].truthy();
      if (v.is_undefined() || (boolean && !v.truthy())) return b.has(0) ? b[0] : Value("");
      return v;
    }
    if (name == "tojson") {
      Bound b = bind(a, {"ensure_ascii", "indent", "separators", "sort_keys"}, name);
      int indent = -1;
      std::string indent_str;
      if (b.has(1) && !b[1].is_none()) {
        if (b[1].is_string())
          indent_str = b[1].str();
        else if (is_integral(b[1]))
          indent = static_cast<int>(b[1].as_int());
        else
          value_error("tojson indent must be an int or a string");
      }
      std::string item_sep, key_sep;
      bool seps = b.has(2) && !b[2].is_none();
      if (seps) {
        ValueList s = iterate(b[2]);
        if (s.size() != 2) value_error("tojson separators must be a pair of strings");
        item_sep = need_string(s[0], "separator");
        key_sep = need_string(s[1], "separator");
      }
      if (v.is_undefined()) value_error("Object of type Undefined is not JSON serializable");
      std::string out;
      try {
        out = v.to_json(indent, indent_str, b.has(3) && b[3].truthy(), seps ? &item_sep : nullptr,
                        seps ? &key_sep : nullptr);
      } catch (const UserError& e) {
        value_error(e.what());
      }
      if (b.has(0) && b[0].truthy()) out = ascii_escape_json(out);
      return Value(std::move(out));
    }
    if (name == "length" || name == "count") return Value(py_len(v));
    if (name == "trim") {
      Bound b = bind(a, {"chars"}, name);
      const std::string* chars = (b.has(0) && !b[0].is_none()) ? &need_string(b[0], "trim chars") : nullptr;
      return Value(str_strip(v.to_string(), chars, true, true));
    }
    if (name == "upper") return Value(str_upper(v.to_string()));
    if (name == "lower") return Value(str_lower(v.to_string()));
    if (name == "capitalize") return Value(py_capitalize(v.to_string()));
    if (name == "title") return Value(jinja_title(v.to_string()));
    if (name == "string") return Value(v.to_string());
    if (name == "safe") return v;
    if (name == "e" || name == "escape") return Value(html_escape(v.to_string()));
    if (name == "first") {
      ValueList items = iterate(v);
      return items.empty() ? Value::undefined("No first item, sequence was empty.") : items.front();
    }
    if (name == "last") {
      ValueList items = iterate(v);
      return items.empty() ? Value::undefined("No last item, sequence was empty.") : items.back();
    }
    if (name == "list") return Value(iterate(v));
    if (name == "join") {
      Bound b = bind(a, {"d", "attribute"}, name);
      std::string sep = b.has(0) ? b[0].to_string() : "";
      std::string out;
      bool first = true;
      for (const auto& it : iterate(v)) {
        if (!first) out += sep;
        first = false;
        out += (b.has(1) && !b[1].is_none() ? get_path(it, b[1]) : it).to_string();
      }
      return Value(std::move(out));
    }
    if (name == "replace") {
      Bound b = bind(a, {"old", "new", "count"}, name);
      int64_t count = b.has(2) && !b[2].is_none() ? b[2].as_int() : -1;
      return Value(py_replace(v.to_string(), b[0].to_string(), b[1].to_string(), count));
    }
    if (name == "items") {
      if (v.is_undefined()) return Value(ValueList{});
      if (!v.is_dict()) value_error("Can only get item pairs from a mapping.");
      return dict_items(v);
    }
    if (name == "int" || name == "float") return to_number(name, v, a);
    if (name == "abs") {
      if (!v.is_number()) value_error("bad operand type for abs(): '", v.type_name(), "'");
      return is_integral(v) ? Value(std::abs(v.as_int())) : Value(std::fabs(v.as_float()));
    }
    if (name == "round") {
      Bound b = bind(a, {"precision", "method"}, name);
      if (!v.is_number()) value_error("round needs a number");
      int64_t p = b.has(0) ? b[0].as_int() : 0;
      std::string method = b.has(1) ? b[1].to_string() : "common";
      double scale = std::pow(10.0, static_cast<double>(p)), x = v.as_float() * scale;
      double r;
      if (method == "ceil")
        r = std::ceil(x);
      else if (method == "floor")
        r = std::floor(x);
      else if (method == "common")
        r = std::nearbyint(x);  // Python round(): half to even
      else
        value_error("method must be common, ceil or floor");
      return Value(r / scale);
    }
    if (name == "reverse") {
      if (v.is_string()) {
        std::u32string u = utf8::decode(v.str());
        std::reverse(u.begin(), u.end());
        return Value(utf8::encode(u));
      }
      ValueList items = iterate(v);
      std::reverse(items.begin(), items.end());
      return Value(std::move(items));
    }
    if (name == "center") {
      Bound b = bind(a, {"width"}, name);
      std::u32string u = utf8::decode(v.to_string());
      int64_t width = b.has(0) ? b[0].as_int() : 80;
      if (static_cast<int64_t>(u.size()) >= width) return Value(v.to_string());
      int64_t marg = width - static_cast<int64_t>(u.size());
      int64_t left = marg / 2 + (marg & width & 1);
      return Value(std::string(left, ' ') + v.to_string() + std::string(marg - left, ' '));
    }
    if (name == "indent") return indent(v, a);
    if (name == "attr") {
      Bound b = bind(a, {"name"}, name);
      const std::string& n = need_string(b[0], "attribute name");
      if (v.is_undefined()) undefined_error(v);
      Value m = bound_method(v, n);
      if (!m.is_undefined()) return m;
      if (v.is_namespace()) {
        if (const Value* x = v.dict().find(n)) return *x;
      }
      return Value::undefined("'" + type_object(v) + "' has no attribute '" + n + "'");
    }
    if (name == "dictsort") {
      Bound b = bind(a, {"case_sensitive", "by", "reverse"}, name);
      if (!v.is_dict()) value_error("You can only sort by either \"key\" or \"value\"");
      bool cs = b.has(0) && b[0].truthy();
      std::string by = b.has(1) ? b[1].to_string() : "key";
      if (by != "key" && by != "value") value_error("You can only sort by either \"key\" or \"value\"");
      ValueList items = dict_items(v).list();
      sort_values(items, [&](const Value& x) { return sort_key(x.list()[by == "key" ? 0 : 1], cs); },
                  b.has(2) && b[2].truthy());
      return Value(std::move(items));
    }
    if (name == "sort") {
      Bound b = bind(a, {"reverse", "case_sensitive", "attribute"}, name);
      ValueList items = iterate(v);
      bool cs = b.has(1) && b[1].truthy();
      bool has_attr = b.has(2) && !b[2].is_none();
      sort_values(items, [&](const Value& x) { return sort_key(has_attr ? get_path(x, b[2]) : x, cs); },
                  b.has(0) && b[0].truthy());
      return Value(std::move(items));
    }
    if (name == "unique") {
      Bound b = bind(a, {"case_sensitive", "attribute"}, name);
      bool cs = b.has(0) && b[0].truthy();
      bool has_attr = b.has(1) && !b[1].is_none();
      ValueList out, seen;
      for (const auto& x : iterate(v)) {
        Value key = sort_key(has_attr ? get_path(x, b[1]) : x, cs);
        bool dup = false;
        for (const auto& s : seen) dup = dup || s.equals(key);
        if (!dup) {
          seen.push_back(key);
          out.push_back(x);
        }
      }
      return Value(std::move(out));
    }
    if (name == "min" || name == "max") {
      Bound b = bind(a, {"case_sensitive", "attribute"}, name);
      bool cs = b.has(0) && b[0].truthy();
      bool has_attr = b.has(1) && !b[1].is_none();
      ValueList items = iterate(v);
      if (items.empty()) return Value::undefined("No aggregated item, sequence was empty.");
      size_t best = 0;
      for (size_t i = 1; i < items.size(); ++i) {
        Value ki = sort_key(has_attr ? get_path(items[i], b[1]) : items[i], cs);
        Value kb = sort_key(has_attr ? get_path(items[best], b[1]) : items[best], cs);
        int c = compare_values(ki, kb);
        if (name == "min" ? c < 0 : c > 0) best = i;
      }
      return items[best];
    }
    if (name == "sum") {
      Bound b = bind(a, {"attribute", "start"}, name);
      Value total = b.has(1) ? b[1] : Value(static_cast<int64_t>(0));
      for (const auto& x : iterate(v)) total = arith("+", total, b.has(0) && !b[0].is_none() ? get_path(x, b[0]) : x);
      return total;
    }
    if (name == "select" || name == "reject") {
      if (a.args.empty()) {
        ValueList out;
        for (const auto& x : iterate(v))
          if (x.truthy() == (name == "select")) out.push_back(x);
        return Value(std::move(out));
      }
      std::string test = need_string(a.args[0], "test name");
      if (!known_tests().count(test)) value_error("unsupported test '", test, "'");
      CallArgs targs;
      targs.args.assign(a.args.begin() + 1, a.args.end());
      ValueList out;
      for (const auto& x : iterate(v))
        if (apply_test(test, x, targs, f) == (name == "select")) out.push_back(x);
      return Value(std::move(out));
    }
    if (name == "selectattr" || name == "rejectattr") {
      if (a.args.empty()) value_error(name, " needs an attribute name");
      const Value attr = a.args[0];
      ValueList out;
      for (const auto& x : iterate(v)) {
        Value val = get_path(x, attr);
        bool ok;
        if (a.args.size() == 1) {
          ok = val.truthy();
        } else {
          std::string test = need_string(a.args[1], "test name");
          if (!known_tests().count(test)) value_error("unsupported test '", test, "'");
          CallArgs targs;
          targs.args.assign(a.args.begin() + 2, a.args.end());
          ok = apply_test(test, val, targs, f);
        }
        if (ok == (name == "selectattr")) out.push_back(x);
      }
      return Value(std::move(out));
    }
    if (name == "map") {
      ValueList out;
      const Value* attribute = nullptr;
      const Value* dflt = nullptr;
      for (const auto& [k, val] : a.kwargs) {
        if (k == "attribute") attribute = &val;
        else if (k == "default") dflt = &val;
      }
      if (attribute) {
        for (const auto& x : iterate(v)) {
          Value r = get_path(x, *attribute);
          out.push_back(r.is_undefined() && dflt ? *dflt : r);
        }
        return Value(std::move(out));
      }
      if (a.args.empty()) value_error("map requires a filter argument");
      std::string filt = need_string(a.args[0], "filter name");
      if (!known_filters().count(filt)) value_error("unsupported filter '", filt, "'");
      CallArgs fargs;
      fargs.args.assign(a.args.begin() + 1, a.args.end());
      fargs.kwargs = a.kwargs;
      for (const auto& x : iterate(v)) {
        CallArgs copy = fargs;
        out.push_back(apply_filter(filt, x, copy, f));
      }
      return Value(std::move(out));
    }
    value_error("unsupported filter '", name, "'");
  }

  static Value sort_key(const Value& v, bool case_sensitive) {
    if (!case_sensitive && v.is_string()) return Value(str_lower(v.str()));
    return v;
  }

  template <class Key>
  static void sort_values(ValueList& items, Key key, bool reverse) {
    std::vector<std::pair<Value, size_t>> keyed;
    for (size_t i = 0; i < items.size(); ++i) keyed.emplace_back(key(items[i]), i);
    std::stable_sort(keyed.begin(), keyed.end(), [&](const auto& x, const auto& y) {
      int c = compare_values(x.first, y.first);
      return reverse ? c > 0 : c < 0;
    });
    ValueList out;
    for (const auto& k : keyed) out.push_back(items[k.second]);
    items = std::move(out);
  }

  static std::string ascii_escape_json(const std::string& s) {
    std::string out;
    for (char32_t c : utf8::decode(s)) {
      if (c < 0x80) {
        out += static_cast<char>(c);
        continue;
      }
      char buf[16];
      if (c >= 0x10000) {
        char32_t v = c - 0x10000;
        std::snprintf(buf, sizeof buf, "\\u%04x\\u%04x", static_cast<unsigned>(0xD800 + (v >> 10)),
                      static_cast<unsigned>(0xDC00 + (v & 0x3FF)));
      } else {
        std::snprintf(buf, sizeof buf, "\\u%04x", static_cast<unsigned>(c));
      }
      out += buf;
    }
    return out;
  }

  static std::string html_escape(const std::string& s) {
    std::string out;
    for (char c : s) {
      switch (c) {
        case '&': out += "&amp;"; break;
        case '<': out += "&lt;"; break;
        case '>': out += "&gt;"; break;
        case '"': out += "&#34;"; break;
        case '\'': out += "&#39;"; break;
        default: out += c;
      }
    }
    return out;
  }

  // jinja2's title filter: capitalizes after runs of "-", whitespace and opening brackets.
  static std::string jinja_title(const std::string& s) {
    std::u32string u = utf8::decode(s), out;
    auto is_sep = [](char32_t c) { return c == '-' || c == '(' || c == '{' || c == '[' || c == '<' || utf8::is_space(c); };
    size_t i = 0;
    while (i < u.size()) {
      size_t j = i;
      bool sep = is_sep(u[i]);
      while (j < u.size() && is_sep(u[j]) == sep) ++j;
      if (sep) {
        out.append(u, i, j - i);
      } else {
        out += cp_upper(u[i]);
        for (size_t k = i + 1; k < j; ++k) out += cp_lower(u[k]);
      }
      i = j;
    }
    return utf8::encode(out);
  }

  static Value to_number(const std::string& name, const Value& v, CallArgs& a) {
    bool is_int = name == "int";
    Bound b = is_int ? bind(a, {"default", "base"}, name) : bind(a, {"default"}, name);
    Value dflt = b.has(0) ? b[0] : (is_int ? Value(static_cast<int64_t>(0)) : Value(0.0));
    if (is_int && b.has(1) && b[1].as_int() != 10) value_error("unsupported: int filter with base other than 10");
    if (v.is_number()) return is_int ? Value(v.as_int()) : Value(v.as_float());
    if (!v.is_string()) return dflt;
    std::string s = str_strip(v.str(), nullptr, true, true);
    std::string clean;
    for (char c : s)
      if (c != '_') clean += c;
    if (clean.empty()) return dflt;
    char* end = nullptr;
    if (is_int) {
      errno = 0;
      long long x = std::strtoll(clean.c_str(), &end, 10);
      if (*end == '\0' && errno == 0) return Value(static_cast<int64_t>(x));
    }
    double d = std::strtod(clean.c_str(), &end);
    if (*end != '\0') return dflt;
    return is_int ? Value(static_cast<int64_t>(d)) : Value(d);
  }

  static Value indent(const Value& v, CallArgs& a) {
    Bound b = bind(a, {"width", "first", "blank"}, "indent");
    std::string ind = b.has(0) ? (b[0].is_string() ? b[0].str() : std::string(std::max<int64_t>(0, b[0].as_int()), ' '))
                               : std::string(4, ' ');
    std::string s = v.to_string() + "\n";
    std::vector<std::string> lines;  // str.splitlines on the "\n"-terminated text
    size_t start = 0;
    for (size_t i = 0; i < s.size(); ++i) {
      if (s[i] == '\n' || s[i] == '\r') {
        lines.push_back(s.substr(start, i - start));
        if (s[i] == '\r' && i + 1 < s.size() && s[i + 1] == '\n') ++i;
        start = i + 1;
      }
    }
    std::string rv;
    if (b.has(2) && b[2].truthy()) {
      for (size_t i = 0; i < lines.size(); ++i) rv += (i ? "\n" + ind : "") + lines[i];
    } else {
      rv = lines.empty() ? "" : lines[0];
      for (size_t i = 1; i < lines.size(); ++i) rv += "\n" + (lines[i].empty() ? "" : ind + lines[i]);
    }
    if (b.has(1) && b[1].truthy()) rv = ind + rv;
    return Value(std::move(rv));
  }

  const Template::Program& prog_;
  std::string* out_ = nullptr;
  std::string* main_ = nullptr;
  std::vector<std::pair<size_t, size_t>>* spans_ = nullptr;
  int depth_ = 0;
};

}  // namespace

// ---- Template ---------------------------------------------------------------------------------

Template::Template(std::string_view source, std::string origin) {
  auto p = std::make_shared<Program>();
  p->origin = std::move(origin);
  Lexer lexer(source, p->origin);
  Parser parser(lexer.run(), p->origin);
  p->body = parser.parse_template(p->has_generation);
  program_ = std::move(p);
}

Template::~Template() = default;
Template::Template(const Template&) = default;
Template& Template::operator=(const Template&) = default;

Template::Output Template::render(const Context& vars) const {
  Renderer r(*program_);
  return r.run(vars);
}

bool Template::has_generation_blocks() const { return program_->has_generation; }
const std::string& Template::origin() const { return program_->origin; }

}  // namespace qlora::jinja
