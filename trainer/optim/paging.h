// Explicit paging of optimizer state (kernels/README.md "AdamW", paging): the building blocks.
//
// State lives in fixed-size pages. A device budget holds a set of page slots on the compute
// device: some pages stay resident there, the rest live in a host pool (pinned on CUDA) and
// stream through two slots, copied on a copy queue that overlaps the update of the page before.
// On CUDA the queue is a side stream ordered with the compute stream by events; on CPU it is a
// worker thread copying between two host tiers, so the same pipeline runs (and is tested) in CI.
// The optimizer that uses these is trainer/optim/adamw.h.
#pragma once
#include <ATen/core/Tensor.h>

#include <cstdint>
#include <memory>
#include <optional>
#include <string>

namespace qlora::optim {

// How optimizer state is placed.
struct PagingOptions {
  bool enabled = false;                   // false: every page stays on the compute device
  std::optional<int64_t> device_budget;   // bytes of device memory for state; nullopt = auto
  int64_t page_bytes = int64_t{2} << 20;  // page size; shrunk when the budget holds fewer than 2
};

// Counters for logs (cumulative since construction).
struct PagingStats {
  int64_t pages = 0;                    // pages of state in total
  int64_t page_bytes = 0;               // bytes per page (after any shrinking for a small budget)
  int64_t resident_pages = 0;           // pages that never leave the device
  int64_t streamed_pages = 0;           // pages that live on the host and stream every step
  int64_t streaming_slots = 0;          // device slots the streamed pages rotate through
  int64_t pages_in = 0, pages_out = 0;  // host -> device, device -> host copies
  int64_t bytes_in = 0, bytes_out = 0;
  double stall_seconds = 0;       // time the update waited for a page to arrive
  std::string to_string() const;  // one line for the log
};

// Where a queue's position is: "every copy enqueued before record()".
class CopyMark {
 public:
  virtual ~CopyMark() = default;
};

// The copy queue between the host pool and the device slots. Copies run in the order enqueued.
class CopyQueue {
 public:
  // A CUDA stream queue for a CUDA device, a worker-thread queue for the CPU.
  static std::unique_ptr<CopyQueue> create(at::Device device);
  virtual ~CopyQueue() = default;

  virtual std::unique_ptr<CopyMark> new_mark() = 0;
  // Enqueues dst <- src (byte tensors of the same size; one on the host, one on the device tier).
  virtual void copy(const at::Tensor& dst, const at::Tensor& src) = 0;
  // Sets `mark` to the point after every copy enqueued so far.
  virtual void record(CopyMark& mark) = 0;
  // Compute issued from now on waits until the copies before `mark` are done.
  virtual void compute_wait(const CopyMark& mark) = 0;
  // Copies enqueued from now on wait until the compute issued so far is done.
  virtual void copies_wait_compute() = 0;
  // Blocks the host until every copy and the compute issued so far are done.
  virtual void synchronize() = 0;
  // Seconds compute spent waiting in compute_wait since the last call (may synchronize).
  virtual double take_stall_seconds() = 0;
  // Allocates `bytes` of host memory for the pool (pinned for a CUDA queue).
  virtual at::Tensor host_buffer(int64_t bytes) = 0;
  // Allocates `bytes` of device-tier memory for slots.
  virtual at::Tensor device_buffer(int64_t bytes) = 0;
  // Device memory free for state (auto budget); nullopt when unlimited (CPU).
  virtual std::optional<int64_t> auto_budget() = 0;
};

#ifdef QLORA_WITH_CUDA
std::unique_ptr<CopyQueue> make_cuda_copy_queue(at::Device device);
#endif

}  // namespace qlora::optim
