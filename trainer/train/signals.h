// SIGINT/SIGTERM during training: the handler only sets a flag; the loop finishes the current
// step, writes a checkpoint, prints how to resume, and exits 0. A second signal exits at once.
#pragma once

namespace qlora::train {

// merge_repeats (distributed runs): a signal within a second of the first counts as the same
// request, since a terminal's Ctrl-C can reach a worker both directly and through its launcher.
// quiet: say nothing (the ranks of a distributed run other than rank 0).
void install_stop_handlers(bool merge_repeats = false, bool quiet = false);
bool stop_requested();
void clear_stop_request();  // for tests

}  // namespace qlora::train
