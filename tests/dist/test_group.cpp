// dist::World (torchrun's environment) and dist::Group (c10d's Gloo process group): two ranks
// as two threads of this process, each with its own store client and process group, talking
// over loopback TCP exactly as two processes would.
#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <map>
#include <string>
#include <thread>

#include "trainer/common/error.h"
#include "trainer/dist/dist.h"

namespace qlora {
namespace {

using Env = std::map<std::string, std::string>;

std::optional<dist::World> world_of(const Env& env) {
  return dist::World::from_env([&](const char* k) -> const char* {
    auto it = env.find(k);
    return it == env.end() ? nullptr : it->second.c_str();
  });
}

std::string error_of(const Env& env) {
  try {
    world_of(env);
  } catch (const UserError& e) { return e.what(); }
  return "";
}

TEST(World, FromTorchrunEnvironment) {
  EXPECT_FALSE(world_of({}).has_value());
  EXPECT_FALSE(world_of({{"RANK", "0"}, {"WORLD_SIZE", "1"}}).has_value());  // one process, no store
  const Env env = {{"RANK", "3"},
                   {"WORLD_SIZE", "4"},
                   {"LOCAL_RANK", "1"},
                   {"LOCAL_WORLD_SIZE", "2"},
                   {"MASTER_ADDR", "10.0.0.7"},
                   {"MASTER_PORT", "29500"},
                   {"TORCHELASTIC_USE_AGENT_STORE", "True"},
                   {"TORCHELASTIC_RESTART_COUNT", "2"},
                   {"GLOO_SOCKET_IFNAME", "eth0"}};
  const auto w = world_of(env);
  ASSERT_TRUE(w.has_value());
  EXPECT_EQ(w->rank, 3);
  EXPECT_EQ(w->world_size, 4);
  EXPECT_EQ(w->local_rank, 1);
  EXPECT_EQ(w->local_world_size, 2);
  EXPECT_EQ(w->num_nodes(), 2);
  EXPECT_EQ(w->master_addr, "10.0.0.7");
  EXPECT_EQ(w->master_port, 29500);
  EXPECT_TRUE(w->agent_store);
  EXPECT_EQ(w->restart_count, "2");
  EXPECT_EQ(w->gloo_socket_ifname, "eth0");

  Env plain = env;  // rank 0 hosts the store; LOCAL_* default to a single node
  plain.erase("TORCHELASTIC_USE_AGENT_STORE");
  plain.erase("LOCAL_RANK");
  plain.erase("LOCAL_WORLD_SIZE");
  const auto p = world_of(plain);
  ASSERT_TRUE(p.has_value());
  EXPECT_FALSE(p->agent_store);
  EXPECT_EQ(p->local_rank, 3);
  EXPECT_EQ(p->local_world_size, 4);
}

TEST(World, MalformedEnvironmentNamesTheVariable) {
  const Env ok = {{"RANK", "0"}, {"WORLD_SIZE", "2"}, {"MASTER_ADDR", "127.0.0.1"}, {"MASTER_PORT", "29500"}};
  auto with = [&](const std::string& k, const std::string& v) {
    Env e = ok;
    e[k] = v;
    return e;
  };
  auto without = [&](const std::string& k) {
    Env e = ok;
    e.erase(k);
    return e;
  };
  EXPECT_NE(error_of(with("RANK", "2")).find("RANK=2: expected a rank below WORLD_SIZE=2"), std::string::npos);
  EXPECT_NE(error_of(with("RANK", "x")).find("RANK=x: expected an integer"), std::string::npos);
  EXPECT_NE(error_of(with("WORLD_SIZE", "0")).find("WORLD_SIZE=0"), std::string::npos);
  EXPECT_NE(error_of(with("MASTER_PORT", "70000")).find("MASTER_PORT=70000"), std::string::npos);
  EXPECT_NE(error_of(with("LOCAL_RANK", "5")).find("LOCAL_RANK=5"), std::string::npos);
  EXPECT_NE(error_of(without("WORLD_SIZE")).find("WORLD_SIZE is not set"), std::string::npos);
  EXPECT_NE(error_of(without("MASTER_ADDR")).find("MASTER_ADDR is not set"), std::string::npos);
  EXPECT_NE(error_of(without("MASTER_PORT")).find("MASTER_PORT is not set"), std::string::npos);
  EXPECT_EQ(error_of(ok), "");
}

int free_port() {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = 0;
  ::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a);
  socklen_t n = sizeof a;
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &n);
  const int port = ntohs(a.sin_port);
  ::close(fd);
  return port;
}

dist::World world(int rank, int size, int port) {
  dist::World w;
  w.rank = rank;
  w.world_size = size;
  w.local_rank = rank;
  w.local_world_size = size;
  w.master_addr = "127.0.0.1";
  w.master_port = port;
  return w;
}

TEST(Group, CollectivesAcrossTwoRanks) {
  const int port = free_port();
  std::string errors[2];
  std::string failure;  // what rank 0 reports once rank 1 has left
  auto body = [&](int rank) {
    try {
      auto g = dist::Group::connect(world(rank, 2, port), "gloo", at::Device(at::kCPU), std::chrono::seconds(20));
      // Sums, in buckets small enough that the tensors take several collectives; bf16 is summed
      // in fp32 and rounded back.
      const double r = rank + 1;
      std::vector<at::Tensor> t = {at::full({3}, r, at::kFloat), at::full({5}, 0.5 * r, at::kBFloat16),
                                   at::full({2, 2}, r / 3, at::kDouble), at::Tensor(), at::arange(6, at::kFloat) * r};
      g->all_reduce_sum(t, /*bucket_bytes=*/16);
      EXPECT_TRUE(at::equal(t[0], at::full({3}, 3.0, at::kFloat)));
      EXPECT_TRUE(at::equal(t[1], at::full({5}, 1.5, at::kBFloat16)));
      EXPECT_TRUE(at::allclose(t[2], at::full({2, 2}, 1.0, at::kDouble)));
      EXPECT_FALSE(t[3].defined());
      EXPECT_TRUE(at::equal(t[4], at::arange(6, at::kFloat) * 3));
      const std::vector<double> s = g->all_reduce_sum(std::vector<double>{r, 10 * r});
      EXPECT_EQ(s, (std::vector<double>{3, 30}));
      EXPECT_EQ(g->all_reduce_max(r), 2.0);
      at::Tensor b = at::full({4}, r, at::kFloat);
      g->broadcast({b}, 1);
      EXPECT_TRUE(at::equal(b, at::full({4}, 2.0, at::kFloat)));
      EXPECT_EQ(g->broadcast_string(rank == 0 ? std::string("from rank 0\n\0x", 14) : "ignored"),
                std::string("from rank 0\n\0x", 14));
      g->heartbeat(5);
      g->barrier();
      if (rank == 1) return;  // leaves: its connections close
      std::this_thread::sleep_for(std::chrono::milliseconds(300));
      try {
        g->all_reduce_sum(std::vector<double>{1.0});
      } catch (const dist::CollectiveError& e) { failure = e.what(); }
    } catch (const std::exception& e) { errors[rank] = e.what(); }
  };
  std::thread t1(body, 1);
  body(0);
  t1.join();
  EXPECT_EQ(errors[0], "");
  EXPECT_EQ(errors[1], "");
  EXPECT_NE(failure.find("rank 0: all-reduce"), std::string::npos) << failure;
  EXPECT_NE(failure.find("rank 1 (last finished step 5) stopped responding"), std::string::npos) << failure;
}

TEST(Group, RankThatFailsIsNamedWithItsReason) {
  const int port = free_port();
  std::string failure;
  auto body = [&](int rank) {
    auto g = dist::Group::connect(world(rank, 2, port), "gloo", at::Device(at::kCPU), std::chrono::seconds(20));
    g->barrier();
    if (rank == 1) {
      g->mark_failed("out of memory while training step 3");
      return;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
    try {
      g->barrier();
    } catch (const dist::CollectiveError& e) { failure = e.what(); }
  };
  std::thread t1(body, 1);
  body(0);
  t1.join();
  EXPECT_NE(failure.find("rank 1 failed: out of memory while training step 3"), std::string::npos) << failure;
}

TEST(Group, UnreachableStoreFailsWithinTheTimeout) {
  const int port = free_port();
  const auto t0 = std::chrono::steady_clock::now();
  try {
    dist::Group::connect(world(1, 2, port), "gloo", at::Device(at::kCPU), std::chrono::seconds(2));
    ADD_FAILURE() << "connected to nothing";
  } catch (const dist::CollectiveError& e) {
    EXPECT_NE(std::string(e.what()).find("cannot reach the rendezvous store at 127.0.0.1:" + std::to_string(port)),
              std::string::npos)
        << e.what();
  }
  EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::seconds(15));
  EXPECT_THROW(dist::Group::connect(world(0, 1, port), "nccl", at::Device(at::kCPU), std::chrono::seconds(2)),
               UserError);
}

}  // namespace
}  // namespace qlora
