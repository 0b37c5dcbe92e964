#include "trainer/jinja/template.h"

#include "trainer/jinja/ast.h"
#include "trainer/jinja/lexer.h"
#include "trainer/jinja/parser.h"
#include "trainer/jinja/renderer.h"

namespace qlora::jinja {

Template::Template(std::string_view source, std::string origin) {
  auto p = std::make_shared<Program>();
  p->origin = std::move(origin);
  p->body = parse(lex(source, p->origin), p->origin, p->has_generation);
  program_ = std::move(p);
}

Template::~Template() = default;
Template::Template(const Template&) = default;
Template& Template::operator=(const Template&) = default;

Template::Output Template::render(const Context& vars) const { return jinja::render(*program_, vars); }

bool Template::has_generation_blocks() const { return program_->has_generation; }
const std::string& Template::origin() const { return program_->origin; }

}  // namespace qlora::jinja
