// SIGINT/SIGTERM during training: the handler only sets a flag; the loop finishes the current
// step, writes a checkpoint, prints how to resume, and exits 0. A second signal exits at once.
#pragma once

namespace qlora::train {

void install_stop_handlers();
bool stop_requested();
void clear_stop_request();  // for tests

}  // namespace qlora::train
