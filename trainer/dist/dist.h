// Data-parallel training over LibTorch's c10d: a TCPStore rendezvous and one process group
// (ProcessGroupGloo on the CPU, ProcessGroupNCCL on CUDA), the engine torchrun and PyTorch DDP run
// on. The trainer uses a handful of collectives (sum all-reduce of flat buckets and scalars,
// broadcast, barrier); this layer keeps c10d's headers out of everything else.
//
// Who we are comes from torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE,
// MASTER_ADDR, MASTER_PORT), read by the command line layer (World::from_env) or set by qlora's
// own launcher (dist/launch.h), which imitates torchrun: it hosts the store and tells workers so
// with TORCHELASTIC_USE_AGENT_STORE=True. With an agent store every rank connects as a client
// under the prefix "/worker/attempt_<TORCHELASTIC_RESTART_COUNT>/"; otherwise rank 0 hosts the
// store at MASTER_ADDR:MASTER_PORT (torch's env:// rendezvous).
//
// Failures: every collective waits at most `timeout`. A peer that dies closes its connections
// and the collective fails at once; a peer that hangs fails it after the timeout. Either way the
// error says which ranks stopped: each rank records the last step it reached in the store
// ("heartbeat"), and the failure message names the ranks that are behind or gone.
#pragma once
#include <ATen/core/Tensor.h>

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

namespace qlora::dist {

// One process's place in the job, as torchrun describes it.
struct World {
  int rank = 0;
  int world_size = 1;
  int local_rank = 0;
  int local_world_size = 1;
  std::string master_addr;  // where the store is
  int master_port = 0;
  bool agent_store = false;        // the launcher (torchrun's agent, or ours) hosts the store
  std::string restart_count;       // TORCHELASTIC_RESTART_COUNT with an agent store
  std::string gloo_socket_ifname;  // GLOO_SOCKET_IFNAME: the network interface Gloo binds
  bool distributed() const { return world_size > 1 || !master_addr.empty(); }
  int num_nodes() const { return local_world_size > 0 ? (world_size + local_world_size - 1) / local_world_size : 1; }

  // From the variables torchrun sets, read through `env` (the command line passes getenv; the
  // library reads no environment itself). nullopt when RANK and WORLD_SIZE are both unset, or
  // WORLD_SIZE is 1 and no MASTER_ADDR is set (a plain single-process run). A variable that is set but malformed or inconsistent is a
  // UserError naming it ("environment: RANK=7: expected a rank below WORLD_SIZE=2").
  static std::optional<World> from_env(const std::function<const char*(const char*)>& env);
};

// A collective that failed: another rank died, hung past ddp_timeout, or failed itself. The
// message names the ranks (Group::describe_failure).
class CollectiveError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// The process group of a distributed run. Every call is a collective: all ranks make the same
// calls in the same order.
class Group {
 public:
  // Connects to the store and builds the process group ("gloo" or "nccl"; `device` is the rank's
  // device, cuda:LOCAL_RANK for nccl). UserError when the backend cannot serve the device or is
  // not in this build; the rendezvous fails with an error naming the store address after
  // `timeout`.
  static std::unique_ptr<Group> connect(const World& w, const std::string& backend, const at::Device& device,
                                        std::chrono::seconds timeout);
  ~Group();

  int rank() const { return world_.rank; }
  int size() const { return world_.world_size; }
  const World& world() const { return world_; }
  const std::string& backend() const { return backend_; }
  std::string store_address() const;

  // Sums every tensor in place across the ranks. The tensors are packed into flat buckets of at
  // most `bucket_bytes` (one collective each), grouped by dtype and device.
  void all_reduce_sum(const std::vector<at::Tensor>& tensors, int64_t bucket_bytes = 64 << 20);
  // Sums (or takes the maximum of) doubles across the ranks, in float64.
  std::vector<double> all_reduce_sum(const std::vector<double>& v);
  double all_reduce_max(double v);
  // Copies rank `root`'s tensors into every rank's (in place).
  void broadcast(const std::vector<at::Tensor>& tensors, int root = 0);
  // Rank `root`'s bytes on every rank.
  std::string broadcast_string(const std::string& s, int root = 0);
  void barrier();

  // Records in the store that this rank finished `step` (cheap; no collective).
  void heartbeat(int64_t step);
  // Records that this rank is leaving because of `why` (best effort).
  void mark_failed(const std::string& why);
  // What rank `r` recorded with mark_failed, waiting up to `wait` for it; nullopt if nothing.
  std::optional<std::string> failure_of(int r, std::chrono::milliseconds wait);
  // A one-line description of a failed collective: which ranks stopped (heartbeats behind this
  // rank's, or marked failed), and the transport's own message.
  std::string describe_failure(const std::string& what);

 private:
  Group() = default;
  struct Impl;
  std::unique_ptr<Impl> impl_;
  World world_;
  std::string backend_;
  int64_t last_step_ = -1;
};

// Whether this build can make a process group for `backend` ("gloo", "nccl").
bool backend_available(const std::string& backend);

}  // namespace qlora::dist
