#include "trainer/jinja/lexer.h"

#include <cmath>
#include <stdexcept>

#include "trainer/common/ascii.h"
#include "trainer/common/error.h"
#include "trainer/common/numbers.h"
#include "trainer/jinja/strings.h"
#include "trainer/unicode/char_class.h"
#include "trainer/unicode/utf8.h"

namespace qlora::jinja {

namespace {

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
    std::u32string u = unicode::utf8_decode(std::string_view(s).substr(from));
    for (char32_t c : u)
      if (!unicode::py_isspace(c)) return false;
    return true;
  }

  // Length of Python-\s whitespace starting at p.
  size_t space_run(size_t p) const {
    size_t q = p;
    while (q < src_.size()) {
      unsigned char c = src_[q];
      if (c < 0x80) {
        if (!unicode::py_isspace(c)) break;
        ++q;
        continue;
      }
      size_t len = (c & 0xE0) == 0xC0 ? 2 : (c & 0xF0) == 0xE0 ? 3 : 4;
      std::u32string u = unicode::utf8_decode(std::string_view(src_).substr(q, len));
      if (u.size() != 1 || !unicode::py_isspace(u[0])) break;
      q += len;
    }
    return q - p;
  }

  // After "{%" and its sign: `\s*raw\s*(-%}\s*|%})`; returns where the raw body starts.
  size_t match_raw_begin(size_t p) const {
    p += space_run(p);
    if (src_.compare(p, 3, "raw") != 0) return std::string::npos;
    p += 3;
    if (p < src_.size() && (ascii_is_alnum(src_[p]) || src_[p] == '_')) return std::string::npos;
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
      if (pos_ >= n)
        fail(line_,
             variable ? "unexpected end of template, expected '}}'" : "unexpected end of template, expected '%}'");
      size_t ws = space_run(pos_);
      if (ws) {
        advance_to(pos_ + ws);
        continue;
      }
      char c = src_[pos_];
      bool after_dot = !toks_.empty() && toks_.back().type == Tok::Op && toks_.back().text == ".";
      if (ascii_is_digit(c)) {
        lex_number(after_dot);
      } else if (ascii_is_alpha(c) || c == '_') {
        size_t q = pos_;
        while (q < n && (ascii_is_alnum(src_[q]) || src_[q] == '_')) ++q;
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
      while (q < n &&
             (ascii_is_digit(src_[q]) || (src_[q] == '_' && q + 1 < n && ascii_is_digit(src_[q + 1]) && q > s)))
        ++q;
      return q;
    };
    size_t q = digits(pos_);
    bool is_float = false;
    if (!after_dot) {
      size_t r = q;
      if (r + 1 < n && src_[r] == '.' && ascii_is_digit(src_[r + 1])) {
        r = digits(r + 1);
        is_float = true;
      }
      if (r < n && (src_[r] == 'e' || src_[r] == 'E')) {
        size_t e = r + 1;
        if (e < n && (src_[e] == '+' || src_[e] == '-')) ++e;
        if (e < n && ascii_is_digit(src_[e])) {
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
      // Digits, '.' and an exponent: always a number. Out of range (overflow, or underflow to a
      // subnormal or zero) is an error, as std::stod's ERANGE was.
      const double d = parse_c_double(clean).value();
      const bool nonzero = clean.substr(0, clean.find_first_of("eE")).find_first_of("123456789") != std::string::npos;
      if (std::isinf(d) || std::fpclassify(d) == FP_SUBNORMAL || (d == 0 && nonzero))
        fail(line_, "float literal out of range: " + text);
      push(Tok::Float, text, Value(d));
    } else {
      if (clean.size() > 1 && clean[0] == '0' &&
          (clean[1] == 'x' || clean[1] == 'X' || clean[1] == 'o' || clean[1] == 'O' || clean[1] == 'b' ||
           clean[1] == 'B'))
        fail(line_, "unsupported: non-decimal integer literal");
      const std::optional<int64_t> v = parse_c_int(clean);
      if (!v) fail(line_, "integer literal out of range: " + text);
      push(Tok::Int, text, Value(*v));
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
          if (!ascii_is_xdigit(h)) fail(line_, "truncated escape in string");
          v = v * 16 + (ascii_is_digit(h) ? h - '0' : ((h | 0x20) - 'a' + 10));
        }
        q += len;
        unicode::utf8_append(out, v);
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
            unicode::utf8_append(out, v);
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

}  // namespace

std::vector<Token> lex(std::string_view source, const std::string& origin) { return Lexer(source, origin).run(); }

}  // namespace qlora::jinja
