// qlora train CONFIG [--set key=value ...] [--resume [PATH]] [--allow-config-change]
//                    [--nproc-per-node N [--nnodes M --node-rank R --master-addr A --master-port P]]
#include <fcntl.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <thread>

#include "trainer/cli/commands.h"
#include "trainer/common/error.h"
#include "trainer/config/load.h"
#include "trainer/dist/dist.h"
#include "trainer/dist/launch.h"
#include "trainer/train/trainer.h"

extern char** environ;

namespace qlora::cli {

namespace {

// The worker's command line: ours without the launcher's options (which go to `launcher`).
std::vector<std::string> worker_args(const std::vector<std::string>& argv, std::string* launcher) {
  static const char* const kLauncher[] = {"--nproc-per-node", "--nnodes", "--node-rank", "--master-addr",
                                          "--master-port"};
  std::vector<std::string> out;
  for (size_t i = 0; i < argv.size(); ++i) {
    bool skip = false;
    for (const char* o : kLauncher) {
      const std::string opt = o;
      if (argv[i] == opt) {
        skip = true;
        *launcher += (launcher->empty() ? "" : " ") + opt;
        if (++i < argv.size()) *launcher += " " + argv[i];  // and its value
        break;
      }
      if (argv[i].rfind(opt + "=", 0) == 0) {
        skip = true;
        *launcher += (launcher->empty() ? "" : " ") + argv[i];
        break;
      }
    }
    if (!skip) out.push_back(argv[i]);
  }
  return out;
}

int launch_workers(const TrainArgs& a, const config::TrainConfig& cfg) {
  if (std::getenv("RANK") || std::getenv("WORLD_SIZE"))
    user_error(
        "--nproc-per-node: this process is already a worker of a distributed launcher (RANK/WORLD_SIZE are "
        "set); run either torchrun or qlora's launcher, not both");
  dist::LaunchOptions lo;
  lo.nproc_per_node = a.nproc_per_node;
  lo.nnodes = a.nnodes;
  lo.node_rank = a.node_rank;
  lo.master_addr = a.master_addr;
  lo.master_port = a.master_port;
  if (a.master_port < 0 || a.master_port > 65535)
    user_error("--master-port: expected a port from 1 to 65535, got ", a.master_port);
  // Threads per worker: OMP_NUM_THREADS if set (as torchrun), else the cores shared out.
  const char* omp = std::getenv("OMP_NUM_THREADS");
  const int cores = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  lo.threads_per_worker =
      omp && std::atoi(omp) > 0 ? std::atoi(omp) : std::max(1, cores / std::max(1, a.nproc_per_node));
  std::error_code ec;
  lo.executable = std::filesystem::read_symlink("/proc/self/exe", ec).string();
  if (ec) throw std::runtime_error("cannot find this executable (/proc/self/exe): " + ec.message());
  lo.worker_args = worker_args(a.argv, &lo.launch_options);
  for (char** e = environ; e && *e; ++e) lo.environment.emplace_back(*e);
  lo.timeout = std::chrono::seconds(cfg.ddp_timeout);
  return dist::launch(lo);
}

}  // namespace

int run_train(const TrainArgs& a) {
  config::TrainConfig cfg = config::load_config(a.config, a.set);
  if (a.launcher) return launch_workers(a, cfg);
  train::TrainOptions o;
  o.resume = a.resume;
  o.resume_path = a.resume_path;
  o.allow_config_change = a.allow_config_change;
  o.faults.nonfinite_steps = a.test_nonfinite_steps;
  o.faults.stop_after_step = a.test_stop_after_step;
  o.faults.memory_budget = a.test_memory_budget;
  o.world = dist::World::from_env([](const char* k) { return std::getenv(k); });
  if (const char* lo = std::getenv("QLORA_LAUNCH_OPTIONS"); lo && o.world) o.launch_options = lo;
  if (o.world && o.world->rank > 0) {
    // Rank 0 reports the run; the others print only warnings and errors (stderr).
    std::fflush(stdout);
    const int null = ::open("/dev/null", O_WRONLY);
    if (null >= 0) {
      ::dup2(null, STDOUT_FILENO);
      ::close(null);
    }
  }
  return train::run_training(cfg, o);
}

}  // namespace qlora::cli
