// Progress bars for the ackpt command-line tool (see progress.h).
#include "progress.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstring>

namespace ackpt_cli {

bool ShowProgress(bool quiet) { return !quiet && ::isatty(STDERR_FILENO) == 1; }

std::string HumanBytes(double b) {
  if (b >= 1e9) return fmt::format("{:.2f} GB", b / 1e9);
  if (b >= 1e6) return fmt::format("{:.1f} MB", b / 1e6);
  if (b >= 1e3) return fmt::format("{:.1f} kB", b / 1e3);
  return fmt::format("{:.0f} B", b);
}

bool ProcessIoBytes(uint64_t* bytes) {
  // read(2) on /proc, not stdio: this may run while another thread uses stdio.
  const int fd = ::open("/proc/self/io", O_RDONLY | O_CLOEXEC);
  if (fd < 0) return false;
  char buf[512];
  const ssize_t n = ::read(fd, buf, sizeof buf - 1);
  ::close(fd);
  if (n <= 0) return false;
  buf[n] = '\0';
  unsigned long long rchar = 0, wchar = 0;
  const char* r = std::strstr(buf, "rchar:");
  const char* w = std::strstr(buf, "wchar:");
  if (r == nullptr || w == nullptr) return false;
  if (std::sscanf(r, "rchar: %llu", &rchar) != 1 || std::sscanf(w, "wchar: %llu", &wchar) != 1) {
    return false;
  }
  *bytes = rchar + wchar;
  return true;
}

ProgressBar::ProgressBar(bool enabled, std::string label, uint64_t total_bytes)
    : enabled_(enabled), label_(std::move(label)), total_(total_bytes) {
  if (!enabled_) return;
  start_ = std::chrono::steady_clock::now();
  thread_ = std::thread([this] { Loop(); });
}

ProgressBar::~ProgressBar() { Finish(); }

void ProgressBar::TrackProcessIo() {
  if (!enabled_) return;
  std::lock_guard<std::mutex> lock(mu_);
  uint64_t now = 0;
  track_io_ = ProcessIoBytes(&now);
  io_base_ = now;
}

void ProgressBar::Phase(std::string label, uint64_t total_bytes) {
  if (!enabled_) return;
  std::lock_guard<std::mutex> lock(mu_);
  label_ = std::move(label);
  total_ = total_bytes;
  done_.store(0);
  uint64_t now = 0;
  if (track_io_ && ProcessIoBytes(&now)) io_base_ = now;
  start_ = std::chrono::steady_clock::now();
}

void ProgressBar::Finish() {
  if (!enabled_ || finished_) return;
  finished_ = true;
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  thread_.join();
}

uint64_t ProgressBar::Done() {
  if (track_io_) {
    uint64_t now = 0;
    if (ProcessIoBytes(&now) && now >= io_base_) done_.store(now - io_base_);
  }
  return done_.load();
}

void ProgressBar::Loop() {
  std::unique_lock<std::mutex> lock(mu_);
  Draw(false);  // at once, so even a short run shows what it is doing
  while (!cv_.wait_for(lock, std::chrono::milliseconds(100), [this] { return stop_; })) {
    Draw(false);
  }
  Draw(true);
  std::fputs("\r\033[K", stderr);  // clear the line for what follows
  std::fflush(stderr);
}

// Called with mu_ held.
void ProgressBar::Draw(bool final_draw) {
  uint64_t done = Done();
  if (final_draw && total_ > 0) done = std::max(done, total_);
  if (total_ > 0) done = std::min(done, total_);
  const double secs =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  // The rate of the first moments says little: show it after 0.2 s.
  const std::string rate_text = secs >= 0.2 || final_draw
                                    ? HumanBytes(static_cast<double>(done) / std::max(secs, 1e-3))
                                    : std::string("-");
  int width = 80;
  struct winsize ws;
  if (::ioctl(STDERR_FILENO, TIOCGWINSZ, &ws) == 0 && ws.ws_col > 20) width = ws.ws_col;
  std::string line;
  if (total_ > 0) {
    const double frac = static_cast<double>(done) / static_cast<double>(total_);
    // Fixed-width fields, so the bar does not jump as the numbers change.
    const std::string tail = fmt::format(" {:3.0f}% {:>8}/{:<8} {:>8}/s", 100 * frac,
                                         HumanBytes(static_cast<double>(done)),
                                         HumanBytes(static_cast<double>(total_)), rate_text);
    // Room for label and bar; a long label keeps its end (the file name).
    const int room = width - 1 - static_cast<int>(tail.size()) - 3;  // " [" and "]"
    const size_t max_label = static_cast<size_t>(std::max(8, room - 10));
    std::string label = label_;
    if (label.size() > max_label) label = "..." + label.substr(label.size() - (max_label - 3));
    const int bar = std::max(10, room - static_cast<int>(label.size()));
    const int filled = static_cast<int>(frac * bar);
    line = fmt::format("{} [{}{}]{}", label, std::string(static_cast<size_t>(filled), '#'),
                       std::string(static_cast<size_t>(bar - filled), '.'), tail);
  } else {
    line = fmt::format("{}  {:>9}  {:>9}/s  {:.1f} s", label_,
                       HumanBytes(static_cast<double>(done)), rate_text, secs);
  }
  if (static_cast<int>(line.size()) >= width) line.resize(static_cast<size_t>(width - 1));
  std::fputs(("\r" + line + "\033[K").c_str(), stderr);
  std::fflush(stderr);
}

}  // namespace ackpt_cli
