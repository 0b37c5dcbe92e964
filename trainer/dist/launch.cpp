#include "trainer/dist/launch.h"

#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>

#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <map>
#include <optional>
#include <thread>

#include "trainer/common/error.h"

namespace qlora::dist {

namespace {

std::atomic<int> g_signal_count{0};
std::atomic<int> g_last_signal{0};

void on_launcher_signal(int sig) {
  g_last_signal.store(sig);
  g_signal_count.fetch_add(1);
}

void say(const std::string& s) {
  std::fprintf(stderr, "qlora: %s\n", s.c_str());
  std::fflush(stderr);
}

std::string describe_status(int status) {
  if (WIFEXITED(status)) return "exited with code " + std::to_string(WEXITSTATUS(status));
  if (WIFSIGNALED(status)) {
    const int sig = WTERMSIG(status);
    const char* name = sigabbrev_np(sig);
    return "was killed by signal " + std::to_string(sig) + (name ? std::string(" (SIG") + name + ")" : "");
  }
  return "stopped (status " + std::to_string(status) + ")";
}

int exit_code(int status) {
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
  return 1;
}

}  // namespace

int launch(const LaunchOptions& o) {
  if (o.nproc_per_node < 1) user_error("--nproc-per-node: expected at least 1, got ", o.nproc_per_node);
  if (o.nnodes < 1) user_error("--nnodes: expected at least 1, got ", o.nnodes);
  if (o.node_rank < 0 || o.node_rank >= o.nnodes)
    user_error("--node-rank: expected 0 to ", o.nnodes - 1, " (--nnodes ", o.nnodes, "), got ", o.node_rank);
  if (o.nnodes > 1 && (o.master_addr.empty() || o.master_port == 0))
    user_error("--nnodes ", o.nnodes,
               ": --master-addr and --master-port are needed (node 0's address and a free port)");
  const int world = o.nnodes * o.nproc_per_node;
  std::string addr = o.master_addr.empty() ? "127.0.0.1" : o.master_addr;
  int port = o.master_port;

  // Node 0 hosts the store, as torchrun's agent does; the workers connect as clients.
  c10::intrusive_ptr<c10d::TCPStore> store;
  if (o.node_rank == 0) {
    c10d::TCPStoreOptions so;
    so.port = static_cast<uint16_t>(port);
    so.isServer = true;
    so.waitWorkers = false;
    so.multiTenant = false;
    so.timeout = std::chrono::duration_cast<std::chrono::milliseconds>(o.timeout);
    try {
      store = c10::make_intrusive<c10d::TCPStore>(addr, so);
    } catch (const std::exception& e) {
      const std::string m = first_line(e.what());
      user_error("--master-port ", port, ": cannot host the rendezvous store on port ", port, ": ", m);
    }
    port = store->getPort();
  }
  std::fprintf(stderr, "qlora: launching %d worker%s (ranks %d-%d of %d, %d thread%s each); store %s:%d%s\n",
               o.nproc_per_node, o.nproc_per_node == 1 ? "" : "s", o.node_rank * o.nproc_per_node,
               (o.node_rank + 1) * o.nproc_per_node - 1, world, o.threads_per_worker,
               o.threads_per_worker == 1 ? "" : "s", addr.c_str(), port, o.node_rank == 0 ? " (hosted here)" : "");
  std::fflush(stderr);

  struct sigaction sa {};
  sa.sa_handler = on_launcher_signal;
  sigemptyset(&sa.sa_mask);
  for (int s : {SIGINT, SIGTERM, SIGHUP}) sigaction(s, &sa, nullptr);

  // Everything the children need is built before fork: the child only calls exec.
  std::vector<std::string> base;
  static const char* const kOurs[] = {"RANK=",
                                      "WORLD_SIZE=",
                                      "LOCAL_RANK=",
                                      "LOCAL_WORLD_SIZE=",
                                      "GROUP_RANK=",
                                      "ROLE_RANK=",
                                      "MASTER_ADDR=",
                                      "MASTER_PORT=",
                                      "TORCHELASTIC_USE_AGENT_STORE=",
                                      "TORCHELASTIC_RESTART_COUNT=",
                                      "OMP_NUM_THREADS=",
                                      "QLORA_LAUNCH_OPTIONS="};
  for (const auto& e : o.environment) {
    bool ours = false;
    for (const char* k : kOurs) ours = ours || e.rfind(k, 0) == 0;
    if (!ours) base.push_back(e);
  }
  const pid_t parent = ::getpid();
  std::map<pid_t, int> live;  // pid -> global rank
  for (int lr = 0; lr < o.nproc_per_node; ++lr) {
    const int rank = o.node_rank * o.nproc_per_node + lr;
    std::vector<std::string> env = base;
    env.push_back("RANK=" + std::to_string(rank));
    env.push_back("WORLD_SIZE=" + std::to_string(world));
    env.push_back("LOCAL_RANK=" + std::to_string(lr));
    env.push_back("LOCAL_WORLD_SIZE=" + std::to_string(o.nproc_per_node));
    env.push_back("GROUP_RANK=" + std::to_string(o.node_rank));
    env.push_back("ROLE_RANK=" + std::to_string(rank));
    env.push_back("MASTER_ADDR=" + addr);
    env.push_back("MASTER_PORT=" + std::to_string(port));
    env.push_back("TORCHELASTIC_USE_AGENT_STORE=True");
    env.push_back("TORCHELASTIC_RESTART_COUNT=0");
    env.push_back("OMP_NUM_THREADS=" + std::to_string(o.threads_per_worker));
    env.push_back("QLORA_LAUNCH_OPTIONS=" + o.launch_options);
    std::vector<char*> envp, argv;
    for (auto& e : env) envp.push_back(e.data());
    envp.push_back(nullptr);
    std::string exe = o.executable;
    argv.push_back(exe.data());
    std::vector<std::string> args = o.worker_args;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    std::fflush(nullptr);
    const pid_t pid = ::fork();
    if (pid < 0) {
      for (const auto& [p, r] : live) ::kill(p, SIGKILL);
      throw std::runtime_error(std::string("cannot start a worker: fork: ") + std::strerror(errno));
    }
    if (pid == 0) {
      ::setpgid(0, 0);  // a terminal's Ctrl-C reaches the launcher, which passes it on once
      ::prctl(PR_SET_PDEATHSIG, SIGTERM);
      if (::getppid() != parent) ::_exit(1);
      ::execve(argv[0], argv.data(), envp.data());
      const char m[] = "qlora: error: cannot start a worker (execve failed)\n";
      if (::write(STDERR_FILENO, m, sizeof m - 1) < 0) {}
      ::_exit(127);
    }
    live[pid] = rank;
  }

  int result = 0;
  int forwarded = 0;
  using Clock = std::chrono::steady_clock;
  std::optional<Clock::time_point> failed_at;
  bool failure_named = false;
  int stop_stage = 0;  // 1: SIGTERM sent after a failure, 2: SIGKILL sent
  // After a failure the others fail their next collective at once (a peer that exited) or within
  // ddp_timeout (a peer that hangs); a worker still there after that is the one that hangs.
  const auto grace = o.timeout;
  while (!live.empty()) {
    const int n = g_signal_count.load();
    if (n > forwarded) {
      // SIGHUP (a closed terminal) would end a worker on the spot: it gets SIGTERM instead.
      const int sig = g_last_signal.load() == SIGHUP ? SIGTERM : g_last_signal.load();
      for (const auto& [p, r] : live) ::kill(p, sig);
      if (forwarded == 0)
        say("received signal " + std::to_string(g_last_signal.load()) +
            (sig != g_last_signal.load() ? " (SIGHUP)" : "") + "; passed on to the workers" +
            (sig != g_last_signal.load() ? " as SIGTERM" : "") + " (they checkpoint and exit)");
      forwarded = n;
    }
    int status = 0;
    const pid_t pid = ::waitpid(-1, &status, WNOHANG);
    if (pid > 0) {
      auto it = live.find(pid);
      if (it == live.end()) continue;
      const int rank = it->second;
      live.erase(it);
      const bool ok = WIFEXITED(status) && WEXITSTATUS(status) == 0;
      if (!ok) {
        if (result == 0) result = exit_code(status);
        // Exit code 2: the worker reported a bad input in its own one-line error; nothing to add.
        const bool reported = WIFEXITED(status) && WEXITSTATUS(status) == 2;
        if (!failed_at) failed_at = Clock::now();
        if (!reported && !failure_named) {
          failure_named = true;
          std::fprintf(stderr, "qlora: error: rank %d (pid %d) %s", rank, static_cast<int>(pid),
                       describe_status(status).c_str());
          if (live.size() == 1)
            std::fprintf(stderr, "; the other worker gets ddp_timeout (%llds) to stop",
                         static_cast<long long>(o.timeout.count()));
          if (live.size() > 1)
            std::fprintf(stderr, "; the other %zu workers get ddp_timeout (%llds) to stop", live.size(),
                         static_cast<long long>(o.timeout.count()));
          std::fprintf(stderr, "\n");
          std::fflush(stderr);
        }
      }
      continue;
    }
    if (pid < 0 && errno != EINTR && errno != ECHILD) break;
    if (failed_at) {
      const auto since = Clock::now() - *failed_at;
      if (stop_stage == 0 && since > grace) {
        std::string ranks;
        for (const auto& [p, r] : live) ranks += (ranks.empty() ? "" : ", ") + std::to_string(r);
        say("error: rank" + std::string(live.size() == 1 ? " " : "s ") + ranks +
            " still running ddp_timeout after the failure (hung?); stopping (SIGTERM, then SIGKILL)");
        for (const auto& [p, r] : live) ::kill(p, SIGTERM);
        stop_stage = 1;
      } else if (stop_stage == 1 && since > grace + std::chrono::seconds(5)) {
        for (const auto& [p, r] : live) ::kill(p, SIGKILL);
        stop_stage = 2;
      }
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  return result;
}

}  // namespace qlora::dist
