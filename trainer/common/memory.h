// Process memory: handing freed heap pages back to the system.
#pragma once

namespace qlora {

// Hands the pages of freed temporaries back to the system (glibc's malloc_trim; nothing
// elsewhere). glibc raises its mmap threshold as large blocks are freed, so later multi-MB
// temporaries (the float32 copy of a weight being quantized or merged) come from the heap, and the
// heap keeps their pages after free: measured on an 8-layer model, 220 MB of anonymous memory
// stayed resident beyond the final model without this. Called after each such tensor while a
// checkpoint streams through.
void trim_heap();

}  // namespace qlora
