#include "trainer/train/progress.h"

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <sstream>

#include "trainer/common/fs.h"

namespace qlora::train {

std::string format_duration(double s) {
  if (!std::isfinite(s) || s < 0) return "--:--";
  long t = static_cast<long>(s + 0.5);
  char buf[32];
  if (t >= 3600)
    std::snprintf(buf, sizeof buf, "%ld:%02ld:%02ld", t / 3600, (t / 60) % 60, t % 60);
  else
    std::snprintf(buf, sizeof buf, "%02ld:%02ld", t / 60, t % 60);
  return buf;
}

Progress::Progress(int64_t total_steps, int64_t every, bool force_plain)
    : total_(total_steps), every_(std::max<int64_t>(1, every)), tty_(!force_plain && ::isatty(STDOUT_FILENO)) {}

void Progress::update(const run::StepMetrics& m) {
  const double rate = m.step > 0 ? m.elapsed_s / m.step : 0;
  const double eta = rate * static_cast<double>(total_ - m.step);
  char line[256];
  if (tty_) {
    const int width = 24;
    int filled = total_ > 0 ? static_cast<int>(width * m.step / total_) : 0;
    std::string bar(filled, '=');
    if (filled < width) bar += '>';
    bar.resize(width, ' ');
    std::snprintf(line, sizeof line, "\r\033[2K%lld/%lld [%s] loss %.4f lr %.2e %.0f tok/s ETA %s mem %s",
                  static_cast<long long>(m.step), static_cast<long long>(total_), bar.c_str(), m.loss, m.lr,
                  m.tokens_per_s, format_duration(eta).c_str(), fs::format_bytes(m.memory_bytes).c_str());
    std::fputs(line, stdout);
    std::fflush(stdout);
    bar_shown_ = true;
  } else if (m.step % every_ == 0 || m.step == total_ || m.step == 1) {
    std::snprintf(
        line, sizeof line, "step %lld/%lld loss %.4f lr %.3e grad_norm %.3f %.0f tok/s elapsed %s ETA %s mem %s\n",
        static_cast<long long>(m.step), static_cast<long long>(total_), m.loss, m.lr, m.grad_norm, m.tokens_per_s,
        format_duration(m.elapsed_s).c_str(), format_duration(eta).c_str(), fs::format_bytes(m.memory_bytes).c_str());
    std::fputs(line, stdout);
    std::fflush(stdout);
  }
}

void Progress::message(const std::string& line) {
  if (tty_ && bar_shown_) std::fputs("\r\033[2K", stdout);
  std::fputs(line.c_str(), stdout);
  std::fputc('\n', stdout);
  std::fflush(stdout);
  bar_shown_ = false;
}

void Progress::finish() {
  if (tty_ && bar_shown_) std::fputc('\n', stdout);
  bar_shown_ = false;
  std::fflush(stdout);
}

std::string loss_curve_svg(const std::vector<run::StepMetrics>& steps, const std::vector<run::EvalMetrics>& evals,
                           const std::string& title) {
  const double W = 720, H = 420, L = 70, R = 20, T = 40, B = 50;
  double xmin = 0, xmax = 1, ymin = INFINITY, ymax = -INFINITY;
  for (const auto& s : steps)
    if (std::isfinite(s.loss)) {
      xmax = std::max(xmax, double(s.step));
      ymin = std::min(ymin, s.loss);
      ymax = std::max(ymax, s.loss);
    }
  for (const auto& e : evals)
    if (std::isfinite(e.loss)) {
      xmax = std::max(xmax, double(e.step));
      ymin = std::min(ymin, e.loss);
      ymax = std::max(ymax, e.loss);
    }
  if (!std::isfinite(ymin)) {
    ymin = 0;
    ymax = 1;
  }
  if (ymax - ymin < 1e-9) {
    ymax += 0.5;
    ymin -= 0.5;
  }
  const double pad = 0.05 * (ymax - ymin);
  ymin -= pad;
  ymax += pad;
  auto X = [&](double x) { return L + (x - xmin) / (xmax - xmin) * (W - L - R); };
  auto Y = [&](double y) { return T + (ymax - y) / (ymax - ymin) * (H - T - B); };
  std::ostringstream o;
  o.setf(std::ios::fixed);
  o.precision(2);
  o << "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"" << W << "\" height=\"" << H << "\" viewBox=\"0 0 " << W
    << " " << H << "\" font-family=\"sans-serif\" font-size=\"12\">\n";
  o << "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n";
  std::string esc;
  for (char c : title) esc += c == '<' ? std::string("&lt;") : c == '&' ? std::string("&amp;") : std::string(1, c);
  o << "<text x=\"" << W / 2 << "\" y=\"22\" text-anchor=\"middle\" font-size=\"15\">" << esc << "</text>\n";
  o << "<rect x=\"" << L << "\" y=\"" << T << "\" width=\"" << W - L - R << "\" height=\"" << H - T - B
    << "\" fill=\"none\" stroke=\"#444\"/>\n";
  for (int i = 0; i <= 5; ++i) {
    double yv = ymin + (ymax - ymin) * i / 5.0, xv = xmin + (xmax - xmin) * i / 5.0;
    o << "<line x1=\"" << L << "\" x2=\"" << W - R << "\" y1=\"" << Y(yv) << "\" y2=\"" << Y(yv)
      << "\" stroke=\"#ddd\"/>\n";
    o << "<text x=\"" << L - 6 << "\" y=\"" << Y(yv) + 4 << "\" text-anchor=\"end\">";
    o.precision(3);
    o << yv;
    o.precision(2);
    o << "</text>\n";
    o << "<text x=\"" << X(xv) << "\" y=\"" << H - B + 18 << "\" text-anchor=\"middle\">" << static_cast<long>(xv + 0.5)
      << "</text>\n";
  }
  o << "<text x=\"" << (L + W - R) / 2 << "\" y=\"" << H - 12 << "\" text-anchor=\"middle\">step</text>\n";
  o << "<text x=\"16\" y=\"" << (T + H - B) / 2 << "\" transform=\"rotate(-90 16 " << (T + H - B) / 2
    << ")\" text-anchor=\"middle\">loss</text>\n";
  if (!steps.empty()) {
    o << "<polyline fill=\"none\" stroke=\"#1f77b4\" stroke-width=\"1.5\" points=\"";
    for (const auto& s : steps)
      if (std::isfinite(s.loss)) o << X(double(s.step)) << "," << Y(s.loss) << " ";
    o << "\"/>\n";
  }
  for (const auto& e : evals)
    if (std::isfinite(e.loss))
      o << "<circle cx=\"" << X(double(e.step)) << "\" cy=\"" << Y(e.loss) << "\" r=\"4\" fill=\"#d62728\"/>\n";
  o << "<line x1=\"" << W - R - 150 << "\" x2=\"" << W - R - 130 << "\" y1=\"" << T + 15 << "\" y2=\"" << T + 15
    << "\" stroke=\"#1f77b4\" stroke-width=\"2\"/><text x=\"" << W - R - 125 << "\" y=\"" << T + 19
    << "\">train loss</text>\n";
  o << "<circle cx=\"" << W - R - 140 << "\" cy=\"" << T + 33 << "\" r=\"4\" fill=\"#d62728\"/><text x=\""
    << W - R - 125 << "\" y=\"" << T + 37 << "\">eval loss</text>\n";
  o << "</svg>\n";
  return o.str();
}

}  // namespace qlora::train
