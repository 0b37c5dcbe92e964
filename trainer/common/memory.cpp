#include "trainer/common/memory.h"

#if defined(__GLIBC__)
#include <malloc.h>
#endif

namespace qlora {

void trim_heap() {
#if defined(__GLIBC__)
  ::malloc_trim(0);
#endif
}

}  // namespace qlora
