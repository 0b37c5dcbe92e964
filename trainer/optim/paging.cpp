// CPU copy queue (a worker thread between two host tiers), stats.
#include "trainer/optim/paging.h"

#include <ATen/ATen.h>

#include <chrono>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <mutex>
#include <sstream>
#include <thread>

#include "trainer/common/fs.h"

namespace qlora::optim {

std::string PagingStats::to_string() const {
  std::ostringstream os;
  os << pages << " pages of " << fs::format_bytes(static_cast<uint64_t>(page_bytes)) << " (" << resident_pages
     << " resident, " << streamed_pages << " streamed through " << streaming_slots << " slots); moved " << pages_in
     << " in / " << pages_out << " out (" << fs::format_bytes(static_cast<uint64_t>(bytes_in + bytes_out))
     << "), stalled " << stall_seconds << " s";
  return os.str();
}

namespace {

// Host-tier queue: a worker thread runs the copies in order. Compute on the CPU is synchronous,
// so "copies wait for compute" holds by construction: a copy is enqueued after the update that
// produced its source has returned.
class CpuCopyQueue final : public CopyQueue {
 public:
  struct Mark final : CopyMark {
    int64_t ticket = 0;  // number of copies that must be done
  };

  CpuCopyQueue() : worker_([this] { run(); }) {}
  ~CpuCopyQueue() override {
    {
      std::lock_guard<std::mutex> lk(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    worker_.join();
  }

  std::unique_ptr<CopyMark> new_mark() override { return std::make_unique<Mark>(); }

  void copy(const at::Tensor& dst, const at::Tensor& src) override {
    TORCH_CHECK(
        dst.is_cpu() && src.is_cpu() && dst.nbytes() == src.nbytes() && dst.is_contiguous() && src.is_contiguous(),
        "CpuCopyQueue: copies contiguous host buffers of equal size");
    {
      std::lock_guard<std::mutex> lk(mu_);
      jobs_.push_back({static_cast<uint8_t*>(dst.data_ptr()), static_cast<const uint8_t*>(src.data_ptr()),
                       static_cast<size_t>(src.nbytes())});
      ++enqueued_;
    }
    cv_.notify_all();
  }

  void record(CopyMark& mark) override {
    std::lock_guard<std::mutex> lk(mu_);
    static_cast<Mark&>(mark).ticket = enqueued_;
  }

  void compute_wait(const CopyMark& mark) override {
    const int64_t t = static_cast<const Mark&>(mark).ticket;
    std::unique_lock<std::mutex> lk(mu_);
    if (done_ >= t) return;
    const auto t0 = std::chrono::steady_clock::now();
    done_cv_.wait(lk, [&] { return done_ >= t; });
    stall_ += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  }

  void copies_wait_compute() override {}

  void synchronize() override {
    std::unique_lock<std::mutex> lk(mu_);
    done_cv_.wait(lk, [&] { return done_ >= enqueued_; });
  }

  double take_stall_seconds() override {
    std::lock_guard<std::mutex> lk(mu_);
    const double s = stall_;
    stall_ = 0;
    return s;
  }

  at::Tensor host_buffer(int64_t bytes) override { return at::zeros({bytes}, at::kByte); }
  at::Tensor device_buffer(int64_t bytes) override { return at::zeros({bytes}, at::kByte); }
  std::optional<int64_t> auto_budget() override { return std::nullopt; }

 private:
  struct Job {
    uint8_t* dst;
    const uint8_t* src;
    size_t bytes;
  };

  void run() {
    std::unique_lock<std::mutex> lk(mu_);
    for (;;) {
      cv_.wait(lk, [&] { return stop_ || !jobs_.empty(); });
      if (jobs_.empty() && stop_) return;
      Job j = jobs_.front();
      lk.unlock();
      std::memcpy(j.dst, j.src, j.bytes);
      lk.lock();
      jobs_.pop_front();
      ++done_;
      done_cv_.notify_all();
    }
  }

  std::mutex mu_;
  std::condition_variable cv_, done_cv_;
  std::deque<Job> jobs_;
  int64_t enqueued_ = 0, done_ = 0;
  double stall_ = 0;
  bool stop_ = false;
  std::thread worker_;
};

}  // namespace

std::unique_ptr<CopyQueue> CopyQueue::create(at::Device device) {
  if (device.is_cpu()) return std::make_unique<CpuCopyQueue>();
#ifdef QLORA_WITH_CUDA
  if (device.is_cuda()) return make_cuda_copy_queue(device);
#endif
  TORCH_CHECK(false, "optimizer paging: unsupported device ", device);
}

}  // namespace qlora::optim
