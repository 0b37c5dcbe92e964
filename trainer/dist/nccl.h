// The NCCL process group, in its own file: its header needs nccl.h and the CUDA runtime, which
// only CUDA builds have (nccl.cpp is compiled there; nccl_stub.cpp elsewhere).
#pragma once
#include <ATen/core/Tensor.h>
#include <c10/util/intrusive_ptr.h>

#include <chrono>

namespace c10d {
class Backend;
class Store;
}  // namespace c10d

namespace qlora::dist {

bool nccl_available();
// ProcessGroupNCCL over `store` on `device` (cuda:LOCAL_RANK), collectives timing out after
// `timeout`.
c10::intrusive_ptr<c10d::Backend> make_nccl_group(const c10::intrusive_ptr<c10d::Store>& store, int rank, int size,
                                                  std::chrono::seconds timeout, const at::Device& device);

}  // namespace qlora::dist
