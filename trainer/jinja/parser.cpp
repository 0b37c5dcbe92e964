#include "trainer/jinja/parser.h"

#include <algorithm>

#include "trainer/common/error.h"
#include "trainer/jinja/builtins.h"

namespace qlora::jinja {

namespace {

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

  // Expressions and blocks nest at most this deep: the parser and the renderer recurse once per
  // level, so a deeper template would overflow the stack instead of being refused.
  static constexpr int kMaxNesting = 100;
  struct Nest {
    Parser& p;
    Nest(Parser& parser, int line) : p(parser) {
      if (++p.nest_ > kMaxNesting) {
        --p.nest_;
        p.fail(line, "nested more than " + std::to_string(kMaxNesting) + " levels deep");
      }
    }
    ~Nest() { --p.nest_; }
  };

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
    Nest nest(*this, cur().line);
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
    Nest nest(*this, line);
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
  int nest_ = 0;
  bool has_generation_ = false;
};

}  // namespace

Body parse(std::vector<Token> tokens, const std::string& origin, bool& has_generation) {
  return Parser(std::move(tokens), origin).parse_template(has_generation);
}

}  // namespace qlora::jinja
