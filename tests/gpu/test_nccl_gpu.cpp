// NCCL through dist::Group (scripts/gpu-check.sh runs this suite; without a CUDA device it
// skips): one rank per visible GPU, as threads of this process, each with its own store client
// and ProcessGroupNCCL on cuda:RANK, exactly as the trainer's workers use it. Checks the sums
// (bf16 gradients are summed in fp32), the scalar sums and broadcasts, and prints the all-reduce
// bandwidth of a 256 MiB fp32 bucket.
#include <ATen/ATen.h>
#include <ATen/Context.h>
#include <c10/cuda/CUDAFunctions.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <string>
#include <thread>
#include <vector>

#include "trainer/dist/dist.h"

using namespace qlora;

namespace {

int free_loopback_port() {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a);
  socklen_t len = sizeof a;
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
  const int port = ntohs(a.sin_port);
  ::close(fd);
  return port;
}

struct RankResult {
  std::string error;
  bool sums_ok = false, scalars_ok = false, broadcast_ok = false;
  double busbw_gbs = 0;
};

}  // namespace

TEST(NcclGpu, GroupAcrossVisibleGpus) {
  if (!at::hasCUDA()) GTEST_SKIP() << "no CUDA device";
  ASSERT_TRUE(dist::backend_available("nccl"));
  const int n = static_cast<int>(c10::cuda::device_count());
  const int port = free_loopback_port();
  std::vector<RankResult> res(n);
  auto body = [&](int r) {
    RankResult& out = res[r];
    try {
      dist::World w;
      w.rank = r;
      w.world_size = n;
      w.local_rank = r;
      w.local_world_size = n;
      w.master_addr = "127.0.0.1";
      w.master_port = port;
      const at::Device dev(at::kCUDA, static_cast<c10::DeviceIndex>(r));
      auto g = dist::Group::connect(w, "nccl", dev, std::chrono::seconds(120));
      const double tri = n * (n + 1) / 2.0;
      std::vector<at::Tensor> t = {
          at::full({1 << 20}, r + 1.0, at::TensorOptions().dtype(at::kFloat).device(dev)),
          at::full({4097}, 0.5 * (r + 1), at::TensorOptions().dtype(at::kBFloat16).device(dev))};
      g->all_reduce_sum(t);
      out.sums_ok = at::equal(t[0].cpu(), at::full({1 << 20}, tri, at::kFloat)) &&
                    at::equal(t[1].cpu(), at::full({4097}, 0.5 * tri, at::kBFloat16));
      out.scalars_ok =
          g->all_reduce_sum(std::vector<double>{r + 1.0}) == std::vector<double>{tri} && g->all_reduce_max(r) == n - 1;
      out.broadcast_ok = g->broadcast_string(r == 0 ? "from rank 0" : "") == "from rank 0";
      // Bandwidth of one 256 MiB bucket (bus bandwidth as nccl-tests count it).
      std::vector<at::Tensor> big = {at::ones({64 << 20}, at::TensorOptions().dtype(at::kFloat).device(dev))};
      g->all_reduce_sum(big, int64_t{1} << 30);
      g->barrier();
      const int reps = 5;
      const auto t0 = std::chrono::steady_clock::now();
      for (int i = 0; i < reps; ++i) g->all_reduce_sum(big, int64_t{1} << 30);
      c10::cuda::device_synchronize();
      const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() / reps;
      out.busbw_gbs = (n > 1 ? 2.0 * (n - 1) / n : 1.0) * big[0].nbytes() / s / 1e9;
    } catch (const std::exception& e) { out.error = e.what(); }
  };
  std::vector<std::thread> threads;
  for (int r = 1; r < n; ++r) threads.emplace_back(body, r);
  body(0);
  for (auto& th : threads) th.join();
  for (int r = 0; r < n; ++r) {
    SCOPED_TRACE("rank " + std::to_string(r));
    EXPECT_EQ(res[r].error, "");
    EXPECT_TRUE(res[r].sums_ok);
    EXPECT_TRUE(res[r].scalars_ok);
    EXPECT_TRUE(res[r].broadcast_ok);
  }
  std::printf("nccl: %d GPU%s, all-reduce of 256 MiB fp32: %.1f GB/s bus bandwidth (rank 0)\n", n, n == 1 ? "" : "s",
              res[0].busbw_gbs);
}
