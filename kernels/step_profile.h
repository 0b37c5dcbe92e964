// Where the time of a training step goes, part by part (the profiler behind the config keys
// profiler_steps / profiler_steps_start).
//
//   profile::begin(device);                 // start collecting (one process-wide collector)
//   { profile::Scope s(profile::Part::attention); ...work... }
//   profile::Breakdown b = profile::end();  // seconds per part
//
// Each Scope is a timed frame, and so is every autograd node that backward runs (seen through a
// RecordFunction callback; a node is given a part from its name, e.g. qlora::LoraLinearBackward ->
// lora, ScaledDotProduct...Backward -> attention, elementwise nodes -> norm_rope_act). A frame's
// time is exclusive: the frames nested in it (on the same thread) are subtracted, so on one thread
// the parts add up to the step time less what no frame covers (data loading, host code between
// frames); threads that run frames side by side (CPU row shards) add their times. While
// collecting, the device is synchronized at every frame boundary, so each part's time is the
// device work it launched (not overlapped with the next part's); that makes a profiled step
// slower than a plain one, and the report says by how much. When not collecting, a Scope costs one
// relaxed atomic load.
#pragma once
#include <c10/core/Device.h>

#include <array>
#include <cstdint>

namespace qlora::kernels::profile {

enum class Part : int {
  dequantize,     // NF4 -> 16-bit (on the CPU fused into the GEMM tiles: counted under base_gemm)
  base_gemm,      // products with the frozen base weights, forward and backward
  lora,           // the adapters' products, dropout and gradient accumulation
  attention,      // scaled_dot_product_attention forward and backward
  norm_rope_act,  // RMSNorm, RoPE, SwiGLU, residual adds and other elementwise work
  loss,           // lm_head products and the cross-entropy, forward and backward
  optimizer,      // gradient clipping and the AdamW update
  paging,         // waits for paged optimizer state still in flight (copies not hidden by compute)
  other,          // embeddings, activation-checkpoint bookkeeping, uncategorised nodes
  count
};

const char* part_name(Part p);

struct Breakdown {
  std::array<double, static_cast<size_t>(Part::count)> seconds{};  // exclusive time per part
  int64_t frames = 0;                                              // timed frames
  int threads = 0;    // threads that ran frames: CPU row shards run side by side, so the parts sum
                      // thread time and may exceed wall_s when this is above 1
  double wall_s = 0;  // begin() to end()
};

bool active();
void begin(c10::Device device);
Breakdown end();

class Scope {
 public:
  explicit Scope(Part p);
  ~Scope();
  Scope(const Scope&) = delete;
  Scope& operator=(const Scope&) = delete;

 private:
  bool on_ = false;
};

// The part an autograd node's time is counted under, from its name (exposed for tests).
Part part_of_node(const char* name);

}  // namespace qlora::kernels::profile
