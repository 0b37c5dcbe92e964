// The device a command runs on, from its device setting or --device.
#pragma once
#include <c10/core/Device.h>

#include <string>

namespace qlora::model {

// "auto" -> cuda:0 when a GPU is visible, else cpu; "cpu", "cuda", "cuda:N". UserError naming
// `what` (e.g. "--device") when CUDA is asked for but not available.
c10::Device resolve_device(const std::string& device, const std::string& what = "device");

}  // namespace qlora::model
