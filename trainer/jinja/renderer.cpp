// The tree-walking renderer, with jinja2's scoping: a for-loop iteration and a macro call are
// fresh scopes, if does not open one, and a namespace() is shared by reference.
#include "trainer/jinja/renderer.h"

#include <algorithm>
#include <memory>
#include <unordered_map>

#include "trainer/common/error.h"
#include "trainer/jinja/builtins.h"
#include "trainer/jinja/methods.h"
#include "trainer/jinja/operations.h"

namespace qlora::jinja {

namespace {

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
  explicit Renderer(const Template::Program& p) : prog_(p) {}

  Template::Output run(const Template::Context& vars) {
    auto globals = std::make_shared<Frame>();
    add_globals(globals->vars);
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
    } catch (const ValueError& e) { fail(s.line, e.what()); }
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
          if (!s.attr.empty() && s.attr[0] == '_')
            fail(s.line, "cannot store underscore-prefixed attributes on a namespace");
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
        // The frame holds the macro, so the macro holds its frame weakly (a shared_ptr both ways
        // would never be freed); the renderer keeps the frame alive until the render ends.
        macro_frames_.push_back(f);
        std::weak_ptr<Frame> closure = f;
        f->vars[s.text] =
            Value::function(s.text, [this, m, closure](CallArgs& a) { return call_macro(*m, closure.lock(), a); });
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
    } catch (const ValueError& err) { fail(e.line, err.what()); }
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
        return apply_filter(e.name, subject, a);
      }
      case Expr::Test: {
        Value subject = eval(*e.args[0], f);
        CallArgs a = eval_args(e, f, 1);
        bool r = apply_test(e.name, subject, a);
        return Value(e.negated ? !r : r);
      }
      case Expr::Not: return Value(!eval(*e.args[0], f).truthy());
      case Expr::Neg:
      case Expr::Pos: {
        Value v = eval(*e.args[0], f);
        if (v.is_undefined()) undefined_error(v);
        if (!v.is_number())
          value_error("bad operand type for unary ", e.kind == Expr::Neg ? "-" : "+", ": '", v.type_name(), "'");
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
      return apply_filter(chain.name, inner, a);
    } catch (const ValueError& err) { fail(chain.line, err.what()); }
  }

  const Template::Program& prog_;
  std::string* out_ = nullptr;
  std::string* main_ = nullptr;
  std::vector<std::pair<size_t, size_t>>* spans_ = nullptr;
  int depth_ = 0;
  std::vector<FramePtr> macro_frames_;  // frames that define macros, alive for the whole render
};

}  // namespace

Template::Output render(const Template::Program& program, const Template::Context& vars) {
  return Renderer(program).run(vars);
}

}  // namespace qlora::jinja
