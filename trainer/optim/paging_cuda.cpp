// CUDA copy queue: a side stream from torch's pool, ordered with the compute (current) stream by
// events; pinned host pool; stall time measured with timing events around each wait.
#ifdef QLORA_WITH_CUDA
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <ATen/cuda/CUDAEvent.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <algorithm>
#include <vector>

#include "trainer/optim/paging.h"

namespace qlora::optim {

namespace {

class CudaCopyQueue final : public CopyQueue {
 public:
  struct Mark final : CopyMark {
    at::cuda::CUDAEvent event;  // recorded on the copy stream
  };

  explicit CudaCopyQueue(at::Device device)
      : device_(device), copy_stream_(c10::cuda::getStreamFromPool(/*isHighPriority=*/false, device.index())) {}

  std::unique_ptr<CopyMark> new_mark() override { return std::make_unique<Mark>(); }

  void copy(const at::Tensor& dst, const at::Tensor& src) override {
    c10::cuda::CUDAGuard guard(device_);
    c10::cuda::CUDAStreamGuard sg(copy_stream_);
    at::Tensor d = dst;
    d.copy_(src, /*non_blocking=*/true);
  }

  void record(CopyMark& mark) override {
    c10::cuda::CUDAGuard guard(device_);
    static_cast<Mark&>(mark).event.record(copy_stream_);
  }

  void compute_wait(const CopyMark& mark) override {
    c10::cuda::CUDAGuard guard(device_);
    auto compute = c10::cuda::getCurrentCUDAStream(device_.index());
    if (timings_.size() >= 4096) stall_ = take_stall_seconds();  // bound the pending events
    // timing events around the wait: their distance is how long the compute stream stood still
    // (or 0 when the copy was already done by the time the stream got there)
    timings_.emplace_back(std::make_unique<at::cuda::CUDAEvent>(cudaEventDefault),
                          std::make_unique<at::cuda::CUDAEvent>(cudaEventDefault));
    timings_.back().first->record(compute);
    const_cast<at::cuda::CUDAEvent&>(static_cast<const Mark&>(mark).event).block(compute);
    timings_.back().second->record(compute);
  }

  void copies_wait_compute() override {
    c10::cuda::CUDAGuard guard(device_);
    compute_done_.record(c10::cuda::getCurrentCUDAStream(device_.index()));
    compute_done_.block(copy_stream_);
  }

  void synchronize() override {
    c10::cuda::CUDAGuard guard(device_);
    copy_stream_.synchronize();
    c10::cuda::getCurrentCUDAStream(device_.index()).synchronize();
  }

  double take_stall_seconds() override {
    double s = stall_;
    for (auto& [t0, t1] : timings_) {  // completed long ago in practice: the loop syncs every step
      t1->synchronize();
      s += static_cast<double>(t0->elapsed_time(*t1)) / 1000.0;
    }
    timings_.clear();
    stall_ = 0;
    return s;
  }

  at::Tensor host_buffer(int64_t bytes) override {
    return at::zeros({bytes}, at::TensorOptions().dtype(at::kByte).pinned_memory(true));
  }
  at::Tensor device_buffer(int64_t bytes) override {
    return at::zeros({bytes}, at::TensorOptions().dtype(at::kByte).device(device_));
  }

  std::optional<int64_t> auto_budget() override {
    c10::cuda::CUDAGuard guard(device_);
    size_t free_b = 0, total_b = 0;
    C10_CUDA_CHECK(cudaMemGetInfo(&free_b, &total_b));
    // Leave room for activations and the allocator: 2 GiB or 10% of the card, whichever is more.
    const int64_t reserve = std::max<int64_t>(int64_t{2} << 30, static_cast<int64_t>(total_b / 10));
    return std::max<int64_t>(0, static_cast<int64_t>(free_b) - reserve);
  }

 private:
  at::Device device_;
  c10::cuda::CUDAStream copy_stream_;
  at::cuda::CUDAEvent compute_done_;
  std::vector<std::pair<std::unique_ptr<at::cuda::CUDAEvent>, std::unique_ptr<at::cuda::CUDAEvent>>> timings_;
  double stall_ = 0;
};

}  // namespace

std::unique_ptr<CopyQueue> make_cuda_copy_queue(at::Device device) {
  return std::make_unique<CudaCopyQueue>(device.has_index() ? device : at::Device(at::kCUDA, 0));
}

}  // namespace qlora::optim
#endif  // QLORA_WITH_CUDA
