// Renders a parsed template: executes its statements against the caller's variables and the
// builtin globals, collecting the text and the byte spans of {% generation %} blocks.
#pragma once
#include "trainer/jinja/ast.h"
#include "trainer/jinja/template.h"

namespace qlora::jinja {

// Runtime errors are UserError "<origin> line N: ...".
Template::Output render(const Template::Program& program, const Template::Context& vars);

}  // namespace qlora::jinja
