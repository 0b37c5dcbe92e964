#include "trainer/dist/nccl.h"

#ifdef QLORA_WITH_NCCL
#define USE_C10D_NCCL 1
#include <c10/cuda/CUDAGuard.h>
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#else
#include <torch/csrc/distributed/c10d/Backend.hpp>
#include "trainer/common/error.h"
#endif

namespace qlora::dist {

#ifdef QLORA_WITH_NCCL

bool nccl_available() { return true; }

c10::intrusive_ptr<c10d::Backend> make_nccl_group(const c10::intrusive_ptr<c10d::Store>& store, int rank, int size,
                                                  std::chrono::seconds timeout, const at::Device& device) {
  c10::cuda::CUDAGuard guard(device);
  auto opts = c10d::ProcessGroupNCCL::Options::create();
  opts->timeout = std::chrono::duration_cast<std::chrono::milliseconds>(timeout);
  return c10::make_intrusive<c10d::ProcessGroupNCCL>(store, rank, size, opts);
}

#else

bool nccl_available() { return false; }

c10::intrusive_ptr<c10d::Backend> make_nccl_group(const c10::intrusive_ptr<c10d::Store>&, int, int,
                                                  std::chrono::seconds, const at::Device&) {
  user_error("ddp_backend: nccl is not available in this build (built without CUDA or NCCL)");
}

#endif

}  // namespace qlora::dist
