#include "trainer/train/signals.h"

#include <unistd.h>

#include <atomic>
#include <csignal>
#include <cstdint>
#include <cstdlib>
#include <ctime>

namespace qlora::train {

namespace {
std::atomic<int> g_signals{0};
std::atomic<bool> g_merge_repeats{false};
std::atomic<bool> g_quiet{false};
std::atomic<int64_t> g_first_ns{0};

int64_t now_ns() {
  timespec ts{};
  clock_gettime(CLOCK_MONOTONIC, &ts);  // async-signal-safe
  return static_cast<int64_t>(ts.tv_sec) * 1000000000 + ts.tv_nsec;
}

void on_signal(int sig) {
  if (g_signals.load() >= 1 && g_merge_repeats.load() && now_ns() - g_first_ns.load() < 1000000000) return;
  if (g_signals.load() == 0) g_first_ns.store(now_ns());
  if (g_signals.fetch_add(1) >= 1) {
    // Second signal: the user insists. No checkpoint.
    const char msg[] = "\nqlora: second signal, exiting without a checkpoint\n";
    if (!g_quiet.load()) {
      ssize_t r = ::write(STDERR_FILENO, msg, sizeof msg - 1);
      (void)r;
    }
    std::_Exit(128 + sig);
  }
  if (g_quiet.load()) return;
  const char msg[] = "\nqlora: stop requested; finishing this step and saving a checkpoint (signal again to abort)\n";
  ssize_t r = ::write(STDERR_FILENO, msg, sizeof msg - 1);
  (void)r;
}
}  // namespace

void install_stop_handlers(bool merge_repeats, bool quiet) {
  g_merge_repeats.store(merge_repeats);
  g_quiet.store(quiet);
  struct sigaction sa {};
  sa.sa_handler = on_signal;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = 0;
  sigaction(SIGINT, &sa, nullptr);
  sigaction(SIGTERM, &sa, nullptr);
}

bool stop_requested() { return g_signals.load() > 0; }
void clear_stop_request() { g_signals.store(0); }

}  // namespace qlora::train
