#include "trainer/model/device.h"

#include <torch/cuda.h>

#include "trainer/common/error.h"

namespace qlora::model {

c10::Device resolve_device(const std::string& d, const std::string& what) {
  if (d == "cpu") return c10::kCPU;
  const bool cuda = torch::cuda::is_available();
  if (d == "auto") return cuda ? c10::Device(c10::kCUDA, 0) : c10::Device(c10::kCPU);
  if (d.rfind("cuda", 0) != 0) user_error(what, ": expected auto, cpu, cuda or cuda:N, got \"", d, "\"");
  if (!cuda) user_error(what, ": ", d, " requested but no CUDA GPU is visible (use cpu or auto)");
  return c10::Device(d);
}

}  // namespace qlora::model
