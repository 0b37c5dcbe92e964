// The parsed form of a template: expression and statement trees, and the Program a Template holds.
#pragma once
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "trainer/jinja/template.h"
#include "trainer/jinja/value.h"

namespace qlora::jinja {

struct Expr;
using ExprPtr = std::unique_ptr<Expr>;

struct Expr {
  enum Kind {
    Literal,
    Name,
    ListLit,
    DictLit,
    Attr,
    Item,
    Slice,
    Call,
    Filter,
    Test,
    Not,
    Neg,
    Pos,
    Binary,
    Concat,
    Compare,
    And,
    Or,
    Cond
  } kind;
  int line = 0;
  Value value;                // Literal
  std::string name;           // Name, Attr, Filter, Test, Binary operator
  std::vector<ExprPtr> args;  // operands; Call: callee first; Filter/Test: subject first
  std::vector<std::pair<std::string, ExprPtr>> kwargs;
  std::vector<std::string> ops;  // Compare operators
  bool negated = false;          // Test: "is not"
  bool is_tuple = false;         // ListLit written as a tuple
};

struct Stmt;
using StmtPtr = std::unique_ptr<Stmt>;
using Body = std::vector<StmtPtr>;

struct Stmt {
  enum Kind { Text, Print, If, For, Set, SetBlock, Macro, Break, Continue, Generation, FilterBlock, With } kind;
  int line = 0;
  std::string text;                                // Text; Macro name
  ExprPtr expr;                                    // Print, Set value, For iterable
  std::vector<std::string> targets;                // Set/For names (several: tuple unpacking); With names
  std::string attr;                                // Set: "ns.attr" target when non-empty (targets[0] = ns)
  ExprPtr cond;                                    // For: "if" filter
  std::vector<std::pair<ExprPtr, Body>> branches;  // If: (test, body); else has a null test
  Body body, else_body;
  std::vector<std::string> params;  // Macro parameters
  std::vector<ExprPtr> defaults;    // Macro defaults (null = none); With values
  ExprPtr filter;                   // SetBlock/FilterBlock: Filter chain applied to a null subject
};

struct Template::Program {
  std::string origin;
  Body body;
  bool has_generation = false;
};

}  // namespace qlora::jinja
