// qlora's own launcher, for `qlora train CONFIG --nproc-per-node N [--nnodes M --node-rank R
// --master-addr A --master-port P]`: what torchrun does for a single job, without Python. It
// starts N workers (this executable again, with the worker arguments) with torchrun's
// environment (RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, GROUP_RANK, MASTER_ADDR,
// MASTER_PORT, TORCHELASTIC_USE_AGENT_STORE=True, TORCHELASTIC_RESTART_COUNT=0, and
// OMP_NUM_THREADS), hosts the rendezvous store on node 0 (on a free port when single-node and
// none is given), and watches the workers:
//   - SIGINT/SIGTERM/SIGHUP to the launcher is passed on to every worker once (SIGHUP as SIGTERM;
//     the workers finish the step, checkpoint and exit 0); a second one is passed on too (they
//     exit at once);
//   - a worker that exits non-zero or is killed is reported on stderr naming its rank; the others
//     get `timeout` (ddp_timeout) plus a margin to exit on their own, then SIGTERM, then SIGKILL;
//   - workers are in their own process group and die with the launcher (PR_SET_PDEATHSIG).
// Returns 0 when every worker exited 0, else the first failure's exit code (128 + signal for a
// killed worker).
#pragma once
#include <chrono>
#include <string>
#include <vector>

namespace qlora::dist {

struct LaunchOptions {
  int nproc_per_node = 1;
  int nnodes = 1;
  int node_rank = 0;
  std::string master_addr;  // empty: 127.0.0.1 (single node only)
  int master_port = 0;      // 0: a free port (single node only)
  int threads_per_worker = 1;
  std::string executable;                // the worker program
  std::vector<std::string> worker_args;  // its arguments (argv[1:])
  std::vector<std::string> environment;  // the launcher's environment, "KEY=VALUE"
  std::string launch_options;            // as given ("--nproc-per-node 2"), told to the workers
                                         // (QLORA_LAUNCH_OPTIONS) for their "resume with:" line
  std::chrono::seconds timeout{1800};
};

int launch(const LaunchOptions& o);

}  // namespace qlora::dist
