// c10d's Gloo process group needs gloo's headers (Debian's libgloo-dev; gloo itself is compiled
// into libtorch_cpu) and this macro, which torch's build defines for its own sources.
#define USE_C10D_GLOO 1
#include "trainer/dist/dist.h"

#include <ATen/ATen.h>
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>

#include <algorithm>
#include <map>
#include <thread>

#include "trainer/common/error.h"
#include "trainer/common/numbers.h"
#include "trainer/dist/nccl.h"

namespace qlora::dist {

namespace {

// An integer environment variable in [lo, hi], or nullopt when unset.
std::optional<int64_t> env_int(const std::function<const char*(const char*)>& env, const char* name, int64_t lo,
                               int64_t hi) {
  const char* v = env(name);
  if (!v) return std::nullopt;
  size_t used = 0;
  const std::optional<int64_t> x = parse_c_int(v, &used);
  if (!x || used != std::string_view(v).size() || *x < lo || *x > hi)
    user_error("environment: ", name, "=", v, ": expected an integer from ", lo, " to ", hi);
  return x;
}

bool is_loopback(const std::string& host) { return host == "localhost" || host.rfind("127.", 0) == 0 || host == "::1"; }

}  // namespace

std::optional<World> World::from_env(const std::function<const char*(const char*)>& env) {
  const std::optional<int64_t> rank = env_int(env, "RANK", 0, 1 << 20);
  const std::optional<int64_t> size = env_int(env, "WORLD_SIZE", 1, 1 << 20);
  if (!rank && !size) return std::nullopt;
  if (!rank || !size)
    user_error("environment: ", rank ? "WORLD_SIZE" : "RANK", " is not set, but ", rank ? "RANK" : "WORLD_SIZE",
               " is: a distributed launcher (torchrun, qlora train --nproc-per-node) sets both");
  World w;
  w.rank = static_cast<int>(*rank);
  w.world_size = static_cast<int>(*size);
  if (w.rank >= w.world_size)
    user_error("environment: RANK=", w.rank, ": expected a rank below WORLD_SIZE=", w.world_size);
  w.local_world_size = static_cast<int>(env_int(env, "LOCAL_WORLD_SIZE", 1, w.world_size).value_or(w.world_size));
  w.local_rank = static_cast<int>(env_int(env, "LOCAL_RANK", 0, w.local_world_size - 1).value_or(w.rank));
  if (!env("LOCAL_RANK") && w.local_rank >= w.local_world_size)
    user_error("environment: LOCAL_RANK is not set and RANK=", w.rank,
               " is not below LOCAL_WORLD_SIZE=", w.local_world_size);
  const char* addr = env("MASTER_ADDR");
  if (w.world_size == 1 && (!addr || !*addr)) return std::nullopt;  // RANK=0 WORLD_SIZE=1: one process
  if (!addr || !*addr)
    user_error("environment: MASTER_ADDR is not set (WORLD_SIZE=", w.world_size,
               "): the address of the rendezvous store is needed");
  w.master_addr = addr;
  const std::optional<int64_t> port = env_int(env, "MASTER_PORT", 1, 65535);
  if (!port)
    user_error("environment: MASTER_PORT is not set (WORLD_SIZE=", w.world_size,
               "): the port of the rendezvous store is needed");
  w.master_port = static_cast<int>(*port);
  const char* agent = env("TORCHELASTIC_USE_AGENT_STORE");
  w.agent_store = agent && std::string_view(agent) == "True";
  if (w.agent_store) {
    const char* rc = env("TORCHELASTIC_RESTART_COUNT");
    w.restart_count = rc && *rc ? rc : "0";
  }
  if (const char* ifn = env("GLOO_SOCKET_IFNAME")) w.gloo_socket_ifname = ifn;
  return w;
}

bool backend_available(const std::string& backend) {
  if (backend == "gloo") return true;
  if (backend == "nccl") return nccl_available();
  return false;
}

struct Group::Impl {
  c10::intrusive_ptr<c10d::TCPStore> tcp;
  c10::intrusive_ptr<c10d::Store> store;  // prefixed
  c10::intrusive_ptr<c10d::Backend> pg;
  std::chrono::seconds timeout{0};
};

Group::~Group() = default;

std::string Group::store_address() const { return world_.master_addr + ":" + std::to_string(world_.master_port); }

std::unique_ptr<Group> Group::connect(const World& w, const std::string& backend, const at::Device& device,
                                      std::chrono::seconds timeout) {
  if (!backend_available(backend))
    user_error("ddp_backend: ", backend, " is not available in this build",
               backend == "nccl" ? " (it was built without NCCL)" : "");
  if (backend == "nccl" && !device.is_cuda())
    user_error("ddp_backend: nccl needs CUDA devices, but this run trains on ", device.str(),
               "; use gloo (or auto) on the CPU");
  std::unique_ptr<Group> g(new Group());
  g->world_ = w;
  g->backend_ = backend;
  g->impl_ = std::make_unique<Impl>();
  Impl& im = *g->impl_;
  im.timeout = timeout;

  c10d::TCPStoreOptions o;
  o.port = static_cast<uint16_t>(w.master_port);
  o.isServer = !w.agent_store && w.rank == 0;
  o.numWorkers = std::nullopt;
  o.waitWorkers = false;
  o.timeout = std::chrono::duration_cast<std::chrono::milliseconds>(timeout);
  o.multiTenant = true;
  try {
    im.tcp = c10::make_intrusive<c10d::TCPStore>(w.master_addr, o);
  } catch (const std::exception& e) {
    const std::string m = first_line(e.what());
    throw CollectiveError("rank " + std::to_string(w.rank) + ": cannot reach the rendezvous store at " +
                          g->store_address() + " within ddp_timeout (" + std::to_string(timeout.count()) + "s): " + m);
  }
  // One namespace per launch attempt (torchrun's restarts reuse the agent's store).
  const std::string prefix = w.agent_store ? "/worker/attempt_" + w.restart_count + "/qlora" : "qlora";
  im.store = c10::make_intrusive<c10d::PrefixStore>(prefix, im.tcp);
  try {
    if (backend == "gloo") {
      auto opts =
          c10d::ProcessGroupGloo::Options::create(std::chrono::duration_cast<std::chrono::milliseconds>(timeout));
      if (!w.gloo_socket_ifname.empty()) {  // one or more interfaces, comma-separated (as torch reads it)
        std::string_view rest = w.gloo_socket_ifname;
        while (!rest.empty()) {
          const size_t c = rest.find(',');
          const std::string name(rest.substr(0, c));
          if (!name.empty()) opts->devices.push_back(c10d::ProcessGroupGloo::createDeviceForInterface(name));
          rest = c == std::string_view::npos ? std::string_view() : rest.substr(c + 1);
        }
      } else if (is_loopback(w.master_addr)) {
        opts->devices.push_back(c10d::ProcessGroupGloo::createDeviceForHostname("127.0.0.1"));
      } else {
        opts->devices.push_back(c10d::ProcessGroupGloo::createDefaultDevice());
      }
      im.pg = c10::make_intrusive<c10d::ProcessGroupGloo>(im.store, w.rank, w.world_size, opts);
    } else {
      im.pg = make_nccl_group(im.store, w.rank, w.world_size, timeout, device);
    }
  } catch (const UserError&) { throw; } catch (const std::exception& e) {
    const std::string m = first_line(e.what());
    throw CollectiveError("rank " + std::to_string(w.rank) + ": the " + backend + " process group of " +
                          std::to_string(w.world_size) + " ranks did not form within ddp_timeout (" +
                          std::to_string(timeout.count()) + "s; store " + g->store_address() + "): " + m);
  }
  return g;
}

namespace {

// The first line of a transport error, without gloo's "[source/file.cc:123] " prefix.
std::string transport_message(const std::exception& e) {
  std::string m = first_line(e.what());
  if (m.starts_with("[")) {
    const size_t close = m.find("] ");
    if (close != std::string::npos && m.substr(0, close).find(".cc:") != std::string::npos) m.erase(0, close + 2);
  }
  return m;
}

}  // namespace

// Runs one collective; a failure becomes a CollectiveError naming the ranks that stopped.
#define QLORA_COLLECTIVE(what, ...)                                                             \
  do {                                                                                          \
    try {                                                                                       \
      __VA_ARGS__;                                                                              \
    } catch (const CollectiveError&) { throw; } catch (const std::exception& e) {               \
      throw CollectiveError(describe_failure(std::string(what) + ": " + transport_message(e))); \
    }                                                                                           \
  } while (0)

void Group::all_reduce_sum(const std::vector<at::Tensor>& tensors, int64_t bucket_bytes) {
  // Buckets of tensors with one dtype and device, in order.
  size_t i = 0;
  while (i < tensors.size()) {
    if (!tensors[i].defined()) {
      ++i;
      continue;
    }
    const at::ScalarType dt = tensors[i].scalar_type();
    const at::Device dev = tensors[i].device();
    std::vector<at::Tensor> bucket;
    int64_t bytes = 0;
    while (i < tensors.size() &&
           (!tensors[i].defined() ||
            (tensors[i].scalar_type() == dt && tensors[i].device() == dev &&
             (bucket.empty() || bytes + tensors[i].nbytes() <= static_cast<size_t>(bucket_bytes))))) {
      if (tensors[i].defined()) {
        bucket.push_back(tensors[i]);
        bytes += static_cast<int64_t>(tensors[i].nbytes());
      }
      ++i;
    }
    // Summed in fp32 whatever the gradients' dtype (bf16 LoRA weights on a GPU).
    std::vector<at::Tensor> flat_views;
    for (const auto& t : bucket) flat_views.push_back(t.reshape({-1}));
    std::vector<at::Tensor> flat = {at::cat(flat_views)};
    if (at::isReducedFloatingType(dt)) flat[0] = flat[0].to(at::kFloat);
    QLORA_COLLECTIVE("all-reduce of gradients", impl_->pg->allreduce(flat)->wait());
    int64_t off = 0;
    for (const auto& t : bucket) {
      t.copy_(flat[0].narrow(0, off, t.numel()).view(t.sizes()));
      off += t.numel();
    }
  }
}

std::vector<double> Group::all_reduce_sum(const std::vector<double>& v) {
  std::vector<at::Tensor> t = {at::tensor(v, at::TensorOptions().dtype(at::kDouble))};
  if (backend_ == "nccl") t[0] = t[0].to(at::Device(at::kCUDA, world_.local_rank));
  QLORA_COLLECTIVE("all-reduce of step counts", impl_->pg->allreduce(t)->wait());
  const at::Tensor c = t[0].cpu();
  return std::vector<double>(c.data_ptr<double>(), c.data_ptr<double>() + c.numel());
}

double Group::all_reduce_max(double v) {
  std::vector<at::Tensor> t = {at::full({1}, v, at::TensorOptions().dtype(at::kDouble))};
  if (backend_ == "nccl") t[0] = t[0].to(at::Device(at::kCUDA, world_.local_rank));
  c10d::AllreduceOptions o;
  o.reduceOp = c10d::ReduceOp::MAX;
  QLORA_COLLECTIVE("all-reduce", impl_->pg->allreduce(t, o)->wait());
  return t[0].cpu().item<double>();
}

void Group::broadcast(const std::vector<at::Tensor>& tensors, int root) {
  for (const auto& t : tensors) {
    if (!t.defined()) continue;
    std::vector<at::Tensor> one = {t.is_contiguous() ? t : t.contiguous()};
    c10d::BroadcastOptions o;
    o.rootRank = root;
    QLORA_COLLECTIVE("broadcast", impl_->pg->broadcast(one, o)->wait());
    if (!one[0].is_same(t)) t.copy_(one[0]);
  }
}

std::string Group::broadcast_string(const std::string& s, int root) {
  const at::Device dev = backend_ == "nccl" ? at::Device(at::kCUDA, world_.local_rank) : at::Device(at::kCPU);
  at::Tensor n = at::full({1}, static_cast<int64_t>(s.size()), at::TensorOptions().dtype(at::kLong)).to(dev);
  broadcast({n}, root);
  const int64_t len = n.cpu().item<int64_t>();
  at::Tensor b = at::zeros({std::max<int64_t>(len, 1)}, at::TensorOptions().dtype(at::kByte));
  if (world_.rank == root) std::copy(s.begin(), s.end(), b.data_ptr<uint8_t>());
  b = b.to(dev);
  broadcast({b}, root);
  b = b.cpu();
  return std::string(reinterpret_cast<const char*>(b.data_ptr<uint8_t>()), static_cast<size_t>(len));
}

void Group::barrier() { QLORA_COLLECTIVE("barrier", impl_->pg->barrier()->wait()); }

void Group::heartbeat(int64_t step) {
  last_step_ = step;
  try {
    impl_->store->set("step/" + std::to_string(world_.rank), std::to_string(step));
  } catch (const std::exception&) {}  // the next collective reports a lost store
}

void Group::mark_failed(const std::string& why) {
  try {
    impl_->store->set("failed/" + std::to_string(world_.rank), why.substr(0, 400));
  } catch (const std::exception&) {}
}

std::optional<std::string> Group::failure_of(int r, std::chrono::milliseconds wait) {
  const auto deadline = std::chrono::steady_clock::now() + wait;
  try {
    impl_->store->setTimeout(std::chrono::seconds(3));
    const std::string k = "failed/" + std::to_string(r);
    for (;;) {
      if (impl_->store->check({k})) {
        const std::vector<uint8_t> v = impl_->store->get(k);
        return std::string(v.begin(), v.end());
      }
      if (std::chrono::steady_clock::now() > deadline) return std::nullopt;
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
  } catch (const std::exception&) { return std::nullopt; }
}

std::string Group::describe_failure(const std::string& what) {
  const std::string me = "rank " + std::to_string(world_.rank);
  c10d::Store& st = *impl_->store;
  std::string out;
  try {
    st.setTimeout(std::chrono::seconds(3));
    st.set("up/" + std::to_string(world_.rank), std::to_string(last_step_));
    // The ranks still running fail their collective at about the same time and say so here;
    // give them a moment, then name the others.
    std::map<int, std::string> failed;
    std::vector<int> silent;
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(3);
    for (;;) {
      failed.clear();
      silent.clear();
      for (int r = 0; r < world_.world_size; ++r) {
        if (r == world_.rank) continue;
        const std::string k = std::to_string(r);
        if (st.check({"failed/" + k})) {
          const std::vector<uint8_t> v = st.get("failed/" + k);
          failed[r] = std::string(v.begin(), v.end());
        } else if (!st.check({"up/" + k})) {
          silent.push_back(r);
        }
      }
      if ((silent.empty() && failed.empty()) || std::chrono::steady_clock::now() > deadline) break;
      if (silent.empty()) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(200));
    }
    for (const auto& [r, why] : failed)
      out += (out.empty() ? "" : "; ") + ("rank " + std::to_string(r) + " failed: " + why);
    if (!silent.empty()) {
      std::string names;
      for (int r : silent) {
        std::string last = "none";
        if (st.check({"step/" + std::to_string(r)})) {
          const std::vector<uint8_t> v = st.get("step/" + std::to_string(r));
          last = std::string(v.begin(), v.end());
        }
        names += (names.empty() ? "" : ", ") + std::to_string(r) + " (last finished step " + last + ")";
      }
      out += (out.empty() ? "" : "; ") + std::string(silent.size() == 1 ? "rank " : "ranks ") + names +
             " stopped responding (exited, killed or hung)";
    }
    if (out.empty()) out = "every other rank is still running";
  } catch (const std::exception&) {
    out = "the rendezvous store at " + store_address() + " is gone (" +
          (world_.agent_store ? std::string("the launcher exited") : std::string("rank 0 exited")) + ")";
  }
  return me + ": " + what + " -- " + out;
}

}  // namespace qlora::dist
