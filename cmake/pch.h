// Precompiled header shared by every C++ target (built once, in qlora_kernels, and reused).
// Torch headers dominate build time on 2 cores: ATen.h costs ~16 s per TU without this and
// ~3 s with it. Keep it to ATen and the standard library; heavier headers (autograd, json,
// CLI11) are included only by the TUs that use them.
#pragma once
#include <ATen/ATen.h>

#include <algorithm>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <sstream>
#include <string>
#include <vector>
