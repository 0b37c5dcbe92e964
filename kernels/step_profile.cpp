#include "kernels/step_profile.h"

#include <ATen/detail/CUDAHooksInterface.h>
#include <ATen/record_function.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <memory>
#include <mutex>
#include <vector>

namespace qlora::kernels::profile {

namespace {

struct Frame {
  Part part;
  double t0;
  double child = 0;  // time of the frames nested in this one
};

std::atomic<bool> g_active{false};
std::mutex g_mu;  // guards everything below
Breakdown g_acc;
c10::Device g_device = c10::kCPU;
double g_t0 = 0;
std::optional<at::CallbackHandle> g_handle;
thread_local std::vector<Frame> t_stack;
uint64_t g_generation = 0;  // one per begin(), so each thread counts once per profile
thread_local uint64_t t_generation = 0;

double now_s() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }

void sync() {
  if (g_device.is_cuda()) at::detail::getCUDAHooks().deviceSynchronize(g_device.index() < 0 ? 0 : g_device.index());
}

void push(Part p) {
  if (t_generation != g_generation) {
    std::lock_guard<std::mutex> lk(g_mu);
    t_generation = g_generation;
    ++g_acc.threads;
  }
  sync();
  t_stack.push_back(Frame{p, now_s()});
}

void pop() {
  if (t_stack.empty()) return;  // collection began inside this frame
  sync();
  const Frame f = t_stack.back();
  t_stack.pop_back();
  const double el = now_s() - f.t0;
  if (!t_stack.empty()) t_stack.back().child += el;
  std::lock_guard<std::mutex> lk(g_mu);
  g_acc.seconds[static_cast<size_t>(f.part)] += el - f.child;
  ++g_acc.frames;
}

struct NodeContext : at::ObserverContext {
  bool pushed = false;
};

std::unique_ptr<at::ObserverContext> on_node_start(const at::RecordFunction& fn) {
  auto ctx = std::make_unique<NodeContext>();
  if (g_active.load(std::memory_order_relaxed)) {
    push(part_of_node(fn.name()));
    ctx->pushed = true;
  }
  return ctx;
}

void on_node_end(const at::RecordFunction&, at::ObserverContext* ctx) {
  if (ctx && static_cast<NodeContext*>(ctx)->pushed) pop();
}

bool starts_with(const char* s, const char* prefix) { return std::strncmp(s, prefix, std::strlen(prefix)) == 0; }

}  // namespace

const char* part_name(Part p) {
  switch (p) {
    case Part::dequantize: return "dequantize";
    case Part::base_gemm: return "base_gemm";
    case Part::lora: return "lora";
    case Part::attention: return "attention";
    case Part::norm_rope_act: return "norm_rope_act";
    case Part::loss: return "loss";
    case Part::optimizer: return "optimizer";
    case Part::paging: return "paging";
    case Part::other: return "other";
    case Part::count: break;
  }
  return "?";
}

Part part_of_node(const char* name) {
  if (!name) return Part::other;
  if (std::strstr(name, "LoraLinear")) return Part::lora;
  if (std::strstr(name, "NF4Linear")) return Part::base_gemm;
  if (std::strstr(name, "CrossEntropy")) return Part::loss;
  if (std::strstr(name, "ScaledDotProduct") || std::strstr(name, "Attention")) return Part::attention;
  if (std::strstr(name, "AccumulateGrad")) return Part::lora;  // only the adapters require grad
  if (std::strstr(name, "Embedding") || std::strstr(name, "Checkpoint")) return Part::other;
  if (starts_with(name, "Mm") || starts_with(name, "Addmm") || starts_with(name, "Bmm") || starts_with(name, "Matmul"))
    return Part::lora;
  return Part::norm_rope_act;  // the remaining built-in nodes are elementwise / views
}

bool active() { return g_active.load(std::memory_order_relaxed); }

void begin(c10::Device device) {
  std::lock_guard<std::mutex> lk(g_mu);
  if (g_active.load()) return;
  g_device = device;
  g_acc = Breakdown{};
  ++g_generation;
  sync();
  g_t0 = now_s();
  g_handle = at::addGlobalCallback(
      at::RecordFunctionCallback(on_node_start, on_node_end).scopes({at::RecordScope::BACKWARD_FUNCTION}));
  g_active.store(true);
}

Breakdown end() {
  sync();
  std::lock_guard<std::mutex> lk(g_mu);
  if (!g_active.load()) return g_acc;
  g_active.store(false);
  if (g_handle) at::removeCallback(*g_handle);
  g_handle.reset();
  g_acc.wall_s = now_s() - g_t0;
  return g_acc;
}

Scope::Scope(Part p) {
  if (!g_active.load(std::memory_order_relaxed)) return;
  push(p);
  on_ = true;
}

Scope::~Scope() {
  if (on_) pop();
}

}  // namespace qlora::kernels::profile
