// The template engine's entry point: a Jinja subset for chat templates, matching what
// transformers renders with jinja2 (ImmutableSandboxedEnvironment, trim_blocks and lstrip_blocks
// on, loopcontrols, its own tojson/raise_exception/strftime_now globals and the
// {% generation %} tag). Values follow Python semantics (trainer/jinja/value.h).
//
// Anything outside the subset (include, import, call blocks, unknown filters or tests, ...) is a
// qlora::UserError naming the construct and the template line, raised when the template is parsed.
#pragma once
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "trainer/jinja/value.h"

namespace qlora::jinja {

// A parsed template. Parsing errors and unsupported constructs are UserError
// "<origin> line N: ...". Thread-safe to render concurrently.
class Template {
 public:
  // origin names the template in messages, e.g. "chat template" or "tokenizer_config.json".
  explicit Template(std::string_view source, std::string origin = "chat template");
  ~Template();
  Template(const Template&);
  Template& operator=(const Template&);

  using Context = std::map<std::string, Value>;

  struct Output {
    std::string text;
    // Byte ranges [begin, end) of text produced inside {% generation %} blocks, in order.
    std::vector<std::pair<size_t, size_t>> generation_spans;
  };

  // Renders with `vars` (messages, add_generation_prompt, bos_token, ...). Runtime errors
  // (raise_exception, use of an undefined value, a type error) are UserError with the line.
  Output render(const Context& vars) const;
  std::string render_text(const Context& vars) const { return render(vars).text; }

  // True if the template contains a {% generation %} block.
  bool has_generation_blocks() const;
  const std::string& origin() const;

  struct Program;  // the parsed form (trainer/jinja/ast.h)

 private:
  std::shared_ptr<const Program> program_;
};

}  // namespace qlora::jinja
