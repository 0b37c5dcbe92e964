// Subcommands whose issues have not landed yet. Each says so plainly and exits 3; nothing
// pretends. An issue that implements a subcommand deletes its stub here.
#include <cstdio>

#include "trainer/cli/commands.h"

namespace qlora::cli {

int not_implemented(const char* name, const char* issue) {
  std::fprintf(stderr, "qlora %s: not implemented yet (tracked by issue %s)\n", name, issue);
  return 3;
}

int run_generate(const GenerateArgs&) { return not_implemented("generate", "P6"); }
int run_eval(const EvalArgs&) { return not_implemented("eval", "P6"); }

}  // namespace qlora::cli
