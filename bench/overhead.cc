// Item 2 — training overhead of checkpointing every K steps.
//
// A synthetic training loop whose step is a fixed amount of compute (a
// register-only FMA kernel calibrated to --step-ms on this machine before the
// run, on `compute` threads) followed by a small in-place update of the state.
// Because the work per step is fixed (not a wall-clock spin), CPU taken by
// ackpt's background writers shows up as a slower loop. For every K:
//   none            no checkpointing (the baseline, re-measured for every K)
//   ackpt           DefaultCheckpointer::save() every K steps (asynchronous,
//                   the defaults: kZstd level 1, storing the frames whose
//                   compression does not pay at the measured disk speed)
//   ackpt_always    the same with always_compress = true (zstd -1 on every
//                   frame: the default before issue 22)
//   ackpt_none      the same with compression = kNone (little background CPU)
//   ackpt_auto      the same with compression = kAuto (compresses a frame only
//                   when its CPU is repaid by the write time it saves)
//   ackpt_low       ackpt with writer_priority = kLow (nice 19 writer threads)
//   ackpt_idle      ackpt with writer_priority = kIdle (SCHED_IDLE writer threads)
//   ackpt_overlap   ackpt with overlap_snapshot = true: save() returns before
//                   the copy; wait_snapshot() is called before the step's
//                   in-place update (the fence's wait counts as stall)
//   ackpt_blocking  DefaultCheckpointer::save(..., force = true) every K steps
//                   (not in the default --modes; the stall driver measures it)
//   torch_save      torch::save(tensors) + fsync every K steps (synchronous)
// Saves happen at steps 0, K, 2K, ... and each is followed by K steps, so an
// asynchronous save has a whole interval to finish; waiting for the last one
// after the loop counts (it is also reported as drain_seconds). For every K
// and repetition the baseline runs next to the modes; overhead samples are
// (loop + drain) / adjacent baseline - 1, summarized as median and min-max.
// --demo runs the trainer layer's demo model (examples/train_demo.cc) with no
// checkpointing, asynchronous saves and --sync; its validation pass runs at
// every checkpoint, so its overheads against "none" include that pass.
// Honest accounting: next to each overhead, its CPU-time floor, the part of
// the run's available CPU seconds (loop wall time x hardware threads) that
// the bytes themselves cost: the CPU seconds of ackpt's background threads
// (user + system time of the threads named ackpt-writer, plus ackpt-copy for
// the overlapped mode, from /proc/self/task/*/stat) over the baseline's
// wall x hardware threads, plus the time the loop stood inside save() and at
// the fence over the baseline's wall. Overhead above the floor is what the
// engine wastes; at the floor it is the price of the bytes. The floor assumes
// no idle CPU (compute on every core); with idle cores background work can
// hide below it.
// The CheckFreq question — the highest checkpoint frequency with overhead
// <= 3.5 % — is answered from the sweep, and estimated by log-log
// interpolation between the measured K (or, beyond the largest K, by
// overhead ~ 1 / K).
//
//   ackpt_bench_overhead [--size 64M] [--step-ms 25] [--steps 80] [--ks 5,10,40]
//       [--configs 1:1,all:0] [--reps 3] [--modes
//       none,ackpt,ackpt_always,ackpt_none,ackpt_auto,ackpt_idle,ackpt_overlap,torch_save]
//       [--dir DIR] [--json FILE] [--quick] [--demo PATH [--demo-steps 60] [--demo-ks 10]]
// --configs: comma-separated compute_threads:writer_threads pairs ("all" =
// hardware threads; writer_threads 0 = ackpt's default, hardware threads).
#include <dirent.h>

#include <cmath>
#include <regex>

#include "bench_common.h"

using namespace bench;

namespace {

// Register-only work: 4 independent FMA chains, no memory traffic.
double Kernel(uint64_t iters, double seed) {
  double a = seed, b = seed * 0.5, c = seed * 0.25, d = seed * 0.125;
  const double m = 0.999999, k = 1e-7;
  for (uint64_t i = 0; i < iters; ++i) {
    a = a * m + k;
    b = b * m + k;
    c = c * m + k;
    d = d * m + k;
  }
  return a + b + c + d;
}

volatile double g_sink = 0;

void Compute(uint64_t iters, int threads) {
  if (threads <= 1) {
    g_sink = g_sink + Kernel(iters, 1.0);
    return;
  }
  std::vector<double> r(static_cast<size_t>(threads));
  std::vector<std::thread> ts;
  for (int t = 1; t < threads; ++t) ts.emplace_back([&, t] { r[t] = Kernel(iters, 1.0 + t); });
  r[0] = Kernel(iters, 1.0);
  for (auto& t : ts) t.join();
  double s = 0;
  for (double x : r) s += x;
  g_sink = g_sink + s;
}

// Iterations of Kernel per millisecond on one thread (best of several trials).
double Calibrate() {
  double best = 0;
  uint64_t n = 1 << 20;
  for (int trial = 0; trial < 8; ++trial) {
    const auto t0 = Clock::now();
    g_sink = g_sink + Kernel(n, 1.0);
    const double ms = Since(t0) * 1e3;
    if (ms < 20) {
      n *= 4;
      --trial;
      continue;
    }
    best = std::max(best, n / ms);
  }
  return best;
}

struct LoopResult {
  double seconds = 0;
  double drain_seconds = 0;
  int saves = 0;
  double stall_seconds = 0;   // total time inside save calls (and at the fence)
  double bg_cpu_seconds = 0;  // CPU time of ackpt's background threads in the run
};

// CPU seconds (user + system) used so far by this process's threads whose
// name starts with one of `prefixes` (ackpt names its threads ackpt-writer
// and ackpt-copy), from /proc/self/task/*/stat (fields 14 and 15, in ticks).
double ThreadCpuSeconds(const std::vector<std::string>& prefixes) {
  DIR* d = ::opendir("/proc/self/task");
  if (d == nullptr) return 0;
  uint64_t ticks = 0;
  while (dirent* e = ::readdir(d)) {
    if (e->d_name[0] == '.') continue;
    const std::string task = std::string("/proc/self/task/") + e->d_name;
    std::string comm;
    std::getline(std::ifstream(task + "/comm") >> std::ws, comm);
    bool match = false;
    for (const auto& p : prefixes) match = match || comm.rfind(p, 0) == 0;
    if (!match) continue;
    std::string line;
    std::getline(std::ifstream(task + "/stat"), line);
    const size_t close = line.rfind(')');
    if (close == std::string::npos) continue;
    std::istringstream rest(line.substr(close + 2));
    std::vector<std::string> f;
    for (std::string x; rest >> x;) f.push_back(x);
    if (f.size() > 12) ticks += std::stoull(f[14 - 3]) + std::stoull(f[15 - 3]);
  }
  ::closedir(d);
  return static_cast<double>(ticks) / static_cast<double>(::sysconf(_SC_CLK_TCK));
}

LoopResult RunLoop(const std::string& mode, ModelState& st, int steps, int k, uint64_t iters,
                   int compute_threads, int writer_threads, const std::string& dir) {
  FreshDir(dir);
  std::unique_ptr<ackpt::DefaultCheckpointer> ck;
  const bool async = mode == "ackpt" || mode == "ackpt_always" || mode == "ackpt_none" ||
                     mode == "ackpt_auto" || mode == "ackpt_low" || mode == "ackpt_idle" ||
                     mode == "ackpt_overlap";
  const bool overlap = mode == "ackpt_overlap";
  // The copy threads of a non-overlapped save run while the loop stands
  // inside save() (counted as stall), so only the writers count as background.
  std::vector<std::string> bg_threads{"ackpt-writer"};
  if (overlap) bg_threads.push_back("ackpt-copy");
  if (async || mode == "ackpt_blocking") {
    ackpt::DefaultCheckpointerArguments args;
    args.save_dir = dir;
    args.model_state_save_dir = dir;
    args.log_level = "WARN";
    args.writer_threads = writer_threads;
    if (mode == "ackpt_always") args.always_compress = true;
    if (mode == "ackpt_none") args.compression = ackpt::Compression::kNone;
    if (mode == "ackpt_auto") args.compression = ackpt::Compression::kAuto;
    if (mode == "ackpt_low") args.writer_priority = ackpt::WriterPriority::kLow;
    if (mode == "ackpt_idle") args.writer_priority = ackpt::WriterPriority::kIdle;
    args.overlap_snapshot = overlap;
    ck = std::make_unique<ackpt::DefaultCheckpointer>(args);
    ck->save(st.checkpoint, 1000000, true);  // warm-up: staging allocated before the timed loop
    std::remove((dir + "/model_1000000.safetensors.zst").c_str());
    std::remove((dir + "/model_1000000.safetensors").c_str());
  }
  std::vector<torch::Tensor> list = st.tensors;
  torch::Tensor touched = st.tensors.back();  // updated every step, like an optimizer would
  LoopResult r;
  const double cpu0 = ck ? ThreadCpuSeconds(bg_threads) : 0;
  const auto t0 = Clock::now();
  for (int step = 0; step < steps; ++step) {
    const bool saving = mode != "none" && step % k == 0;
    if (saving) {
      const auto s0 = Clock::now();
      if (async) {
        ck->save(st.checkpoint, step);
      } else if (mode == "ackpt_blocking") {
        ck->save(st.checkpoint, step, /*force=*/true);
      } else if (mode == "torch_save") {
        const std::string p = dir + "/torch_" + std::to_string(step) + ".pt";
        torch::save(list, p);
        FsyncPath(p);
      }
      r.stall_seconds += Since(s0);
      ++r.saves;
    }
    Compute(iters, compute_threads);
    if (saving && overlap) {
      const auto f0 = Clock::now();
      ck->wait_snapshot();  // the fence, before the optimizer's in-place update
      r.stall_seconds += Since(f0);
    }
    touched.add_(1e-7);
  }
  r.seconds = Since(t0);
  if (ck) {
    const auto d0 = Clock::now();
    ck->wait();
    r.drain_seconds = Since(d0);
    r.bg_cpu_seconds = ThreadCpuSeconds(bg_threads) - cpu0;
    ck.reset();
  }
  RemoveTree(dir);
  return r;
}

// One run of the trainer layer's demo (examples/train_demo.cc) as a
// subprocess; its summary lines are parsed. Returns false if the run failed
// or its output was not understood.
struct DemoRun {
  double loop_seconds = 0;  // steps x ms/step, minus the final forced save
  double ms_per_step = 0;
  double final_save_ms = 0;
  double stall_mean_ms = 0;  // periodic saves, from the demo's summary
  double periodic_stall_pct = 0;
  std::string output;
};

bool RunDemo(const std::string& demo, int steps, int k, bool sync, const std::string& dir,
             DemoRun* out) {
  FreshDir(dir);
  const std::string log = dir + ".log";
  std::vector<std::string> argv{
      demo,         "--steps", std::to_string(steps), "--checkpoint-every", std::to_string(k),
      "--save-dir", dir};
  if (sync) argv.push_back("--sync");
  const int rc = RunProcess(argv, log);
  std::ifstream in(log);
  std::stringstream ss;
  ss << in.rdbuf();
  out->output = ss.str();
  RemoveTree(dir);
  std::remove(log.c_str());
  if (rc != 0) return false;
  std::smatch m;
  const std::string& o = out->output;
  if (!std::regex_search(o, m,
                         std::regex(R"(training:\s+(\d+) steps in ([\d.]+) s \((\d+) ms/step\))")))
    return false;
  out->ms_per_step = std::stod(m[3]);
  const int done = std::stoi(m[1]);
  if (std::regex_search(o, m, std::regex(R"(final save:\s+([\d.]+) ms)")))
    out->final_save_ms = std::stod(m[1]);
  if (std::regex_search(o, m, std::regex(R"(stall per save:\s+mean ([\d.]+) ms)")))
    out->stall_mean_ms = std::stod(m[1]);
  if (std::regex_search(o, m, std::regex(R"(periodic saves ([\d.]+) %)")))
    out->periodic_stall_pct = std::stod(m[1]);
  out->loop_seconds = done * out->ms_per_step / 1e3 - out->final_save_ms / 1e3;
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  Args a(argc, argv,
         "usage: ackpt_bench_overhead [--size 64M] [--step-ms 25] [--steps 80] [--ks 5,10,40] "
         "[--configs 1:1,all:0] [--reps 3] [--modes "
         "none,ackpt,ackpt_always,ackpt_none,ackpt_auto,ackpt_idle,ackpt_overlap,torch_save] "
         "[--dir DIR] "
         "[--json FILE] [--quick] [--demo PATH [--demo-steps 60] [--demo-ks 10]]",
         {"quick"});
  const bool quick = a.Flag("quick");
  const uint64_t size = ParseBytes(a.Str("size", quick ? "8M" : "64M"));
  const double step_ms = a.Num("step-ms", quick ? 5 : 25);
  const int steps = static_cast<int>(a.Num("steps", quick ? 12 : 80));
  std::vector<int> ks;
  for (const auto& s : a.List("ks", quick ? "4,12" : "5,10,40")) ks.push_back(std::stoi(s));
  const auto config_list = a.List("configs", quick ? "1:1" : "1:1,all:0");
  const int reps = std::max(1, static_cast<int>(a.Num("reps", quick ? 1 : 3)));
  const auto modes = a.List(
      "modes",
      quick ? "none,ackpt,ackpt_idle,ackpt_overlap,torch_save"
            : "none,ackpt,ackpt_always,ackpt_none,ackpt_auto,ackpt_idle,ackpt_overlap,torch_save");
  const std::string dir = a.Str("dir", "/tmp/ackpt-bench-overhead");
  const std::string json_out = a.Str("json", "");
  const std::string demo = a.Str("demo", "");
  const int demo_steps = static_cast<int>(a.Num("demo-steps", quick ? 4 : 60));
  std::vector<int> demo_ks;
  for (const auto& s : a.List("demo-ks", quick ? "2" : "10")) demo_ks.push_back(std::stoi(s));
  a.Done();

  ModelState st = MakeModelState(size, torch::kFloat32, 2);
  const double iters_per_ms = Calibrate();
  const uint64_t iters = static_cast<uint64_t>(iters_per_ms * step_ms);
  std::printf(
      "state %.1f MiB (%zu tensors, fp32); step = %.0f ms of fixed compute (%llu FMA "
      "iterations/thread); "
      "%d steps; %d rep(s)\n",
      st.bytes / 1048576.0, st.tensors.size(), step_ms, static_cast<unsigned long long>(iters),
      steps, reps);
  std::fflush(stdout);

  json j = RunInfo("overhead", quick);
  j["bytes"] = st.bytes;
  j["tensors"] = st.tensors.size();
  j["step_ms"] = step_ms;
  j["steps"] = steps;
  j["ks"] = ks;
  j["modes"] = modes;
  j["reps"] = reps;
  j["configs"] = json::array();
  for (const auto& cs : config_list) {
    const auto colon = cs.find(':');
    const std::string cpart = cs.substr(0, colon);
    const int compute = cpart == "all" ? HardwareThreads() : std::stoi(cpart);
    const int writers = colon == std::string::npos ? 0 : std::stoi(cs.substr(colon + 1));
    std::printf("\n== compute threads %d, ackpt writer threads %s ==\n", compute,
                writers == 0 ? ("default (" + std::to_string(HardwareThreads()) + ")").c_str()
                             : std::to_string(writers).c_str());
    json cj;
    cj["compute_threads"] = compute;
    cj["writer_threads"] = writers;
    cj["points"] = json::array();
    std::map<std::string, std::vector<std::pair<double, double>>> curve;  // mode -> (K, overhead)
    // For every K and repetition, the baseline (no checkpointing) runs right
    // next to the checkpointing modes (order rotated), and each overhead
    // sample is loop / that baseline - 1: load on a shared machine drifts over
    // seconds, so adjacent runs are compared.
    std::map<int, std::map<std::string, std::vector<double>>> secs, drain, stall, ovs, floors,
        bg_cpu;
    std::map<int, std::map<std::string, int>> saves;
    std::vector<double> base_s;
    const bool have_none = std::find(modes.begin(), modes.end(), "none") != modes.end();
    for (int r = 0; r < reps; ++r) {
      for (int k : ks) {
        std::map<std::string, double> run_s;
        std::map<std::string, LoopResult> run_bg;
        for (size_t m = 0; m < modes.size(); ++m) {
          const std::string& mode = modes[(m + r + static_cast<size_t>(k)) % modes.size()];
          LoopResult lr =
              RunLoop(mode, st, steps, mode == "none" ? steps : k, iters, compute, writers, dir);
          // An asynchronous save still being written when the loop ends is
          // work the run has not paid for yet: waiting for it counts.
          run_s[mode] = lr.seconds + lr.drain_seconds;
          if (mode == "none") {
            base_s.push_back(run_s[mode]);
            continue;
          }
          bg_cpu[k][mode].push_back(lr.saves ? lr.bg_cpu_seconds / lr.saves : 0);
          run_bg[mode] = lr;
          secs[k][mode].push_back(run_s[mode]);
          drain[k][mode].push_back(lr.drain_seconds);
          stall[k][mode].push_back(lr.saves ? lr.stall_seconds / lr.saves : 0);
          saves[k][mode] = lr.saves;
        }
        if (have_none) {
          for (const auto& kv : run_s) {
            if (kv.first == "none") continue;
            ovs[k][kv.first].push_back(kv.second / run_s["none"] - 1);
            // CPU-time floor against the same adjacent baseline.
            const LoopResult& lr = run_bg[kv.first];
            const double base_wall = run_s["none"];
            floors[k][kv.first].push_back(lr.bg_cpu_seconds / (base_wall * HardwareThreads()) +
                                          lr.stall_seconds / base_wall);
          }
        }
      }
      std::printf("  repetition %d/%d done\n", r + 1, reps);
      std::fflush(stdout);
    }
    const Stat base = Summarize(base_s);
    std::printf("%6s %10s %-16s %10s %10s %10s %8s %9s %8s %10s\n", "K", "every s", "mode",
                "loop s", "min s", "max s", "overhead", "stall/ckpt", "floor", "bg cpu/ckpt");
    std::printf("%6s %10s %-16s %10.3f %10.3f %10.3f %8s %9s\n", "-", "-", "none", base.median,
                base.min, base.max, "-", "-");
    for (int k : ks) {
      for (const auto& mode : modes) {
        if (mode == "none") continue;
        const Stat s = Summarize(secs[k][mode]);
        const Stat ov = Summarize(ovs[k][mode]);
        const double overhead = ov.median;
        const Stat st_s = Summarize(stall[k][mode]);
        json p;
        p["k"] = k;
        p["interval_s"] = k * step_ms / 1e3;
        p["mode"] = mode;
        p["saves"] = saves[k][mode];
        p["loop_seconds"] = ToJson(s);
        p["baseline_seconds"] = ToJson(base);
        p["overhead"] = overhead;
        p["overhead_min"] = ov.min;
        p["overhead_max"] = ov.max;
        p["overhead_samples"] = ov.samples;
        p["stall_per_save_seconds"] = ToJson(st_s);
        p["drain_seconds"] = ToJson(Summarize(drain[k][mode]));
        const Stat fl = Summarize(floors[k][mode]);
        const Stat bg = Summarize(bg_cpu[k][mode]);
        p["cpu_floor"] = fl.median;
        p["cpu_floor_samples"] = fl.samples;
        p["bg_cpu_seconds_per_save"] = ToJson(bg);
        p["over_floor"] = overhead - fl.median;
        cj["points"].push_back(p);
        curve[mode].push_back({double(k), overhead});
        std::printf("%6d %10.2f %-16s %10.3f %10.3f %10.3f %7.1f%% %8.1fms %7.1f%% %8.1fms\n", k,
                    k * step_ms / 1e3, mode.c_str(), s.median, s.min, s.max, overhead * 100,
                    st_s.median * 1e3, fl.median * 100, bg.median * 1e3);
      }
      std::fflush(stdout);
    }
    // CheckFreq: smallest K measured with overhead <= 3.5 %, and the fit.
    json cf;
    for (const auto& c : curve) {
      int best_k = 0;
      for (const auto& p : c.second) {
        if (p.second <= 0.035 && (best_k == 0 || p.first < best_k))
          best_k = static_cast<int>(p.first);
      }
      // Estimate of the smallest K with overhead <= 3.5 %: interpolate
      // log(overhead) against log(K) between the measured K around 3.5 %, or
      // extrapolate from the largest measured K with overhead ~ 1 / K (the
      // cost of a save spread over the interval) when even that is above.
      std::vector<std::pair<double, double>> pts = c.second;
      std::sort(pts.begin(), pts.end());
      double k_fit = 0;
      for (size_t i = 0; i + 1 < pts.size(); ++i) {
        const auto& lo = pts[i];
        const auto& hi = pts[i + 1];
        if (lo.second > 0.035 && hi.second <= 0.035 && hi.second > 0) {
          const double t =
              (std::log(lo.second) - std::log(0.035)) / (std::log(lo.second) - std::log(hi.second));
          k_fit = std::exp(std::log(lo.first) + t * (std::log(hi.first) - std::log(lo.first)));
        }
      }
      if (k_fit == 0 && !pts.empty()) {
        if (pts.front().second <= 0.035) {
          k_fit = pts.front().first;  // already under at the smallest K measured
        } else if (pts.back().second > 0.035) {
          k_fit = pts.back().first * pts.back().second / 0.035;
        }
      }
      const double cost_steps =
          pts.empty() ? 0 : pts.back().first * std::max(0.0, pts.back().second);
      cf[c.first] = {{"smallest_measured_k_under_3_5pct", best_k},
                     {"cost_per_save_steps", cost_steps},
                     {"cost_per_save_seconds", cost_steps * step_ms / 1e3},
                     {"fitted_k_for_3_5pct", k_fit},
                     {"fitted_interval_seconds", k_fit * step_ms / 1e3}};
      std::printf(
          "CheckFreq %-15s smallest measured K with overhead <= 3.5%%: %s; cost at the largest K: "
          "%.1f ms "
          "per save; estimate: every %.1f steps (%.2f s)\n",
          c.first.c_str(), best_k ? std::to_string(best_k).c_str() : "none", cost_steps * step_ms,
          std::max(1.0, k_fit), std::max(1.0, k_fit) * step_ms / 1e3);
    }
    cj["checkfreq"] = cf;
    cj["baseline"] = ToJson(base);
    // Target: ackpt overhead <= 3 % at a K where synchronous saving costs >= 30 %.
    json tg = json::array();
    for (const auto& p : cj["points"]) {
      if (p["mode"] != "torch_save" || p["overhead"].get<double>() < 0.30) continue;
      for (const auto& q : cj["points"]) {
        if (q["mode"] != "torch_save" && q["mode"] != "ackpt_blocking" && q["k"] == p["k"]) {
          tg.push_back({{"k", p["k"]},
                        {"mode", q["mode"]},
                        {"sync_overhead", p["overhead"]},
                        {"ackpt_overhead", q["overhead"]},
                        {"met", q["overhead"].get<double>() <= 0.03}});
        }
      }
    }
    cj["target_points"] = tg;
    j["configs"].push_back(cj);
    WriteJson(json_out, j);
  }
  // The demo model (the trainer layer's ackpt_demo), if given: no
  // checkpointing (--checkpoint-every > steps), asynchronous and --sync.
  if (demo.empty() || ::access(demo.c_str(), X_OK) != 0) {
    j["demo_model"] = {
        {"status", "pending"},
        {"why", demo.empty() ? "no --demo binary given" : "demo binary not found: " + demo}};
  } else {
    json dj;
    dj["status"] = "ok";
    dj["binary"] = demo;
    dj["steps"] = demo_steps;
    dj["points"] = json::array();
    std::printf("\n== demo model (%s), %d steps; loop = steps x ms/step - final forced save ==\n",
                demo.c_str(), demo_steps);
    DemoRun none;
    const bool ok_none = RunDemo(demo, demo_steps, 1000000, false, dir + "/demo", &none);
    if (!ok_none) {
      dj["status"] = "failed";
      dj["output_tail"] =
          none.output.substr(none.output.size() > 2000 ? none.output.size() - 2000 : 0);
    } else {
      dj["none"] = {{"loop_seconds", none.loop_seconds}, {"ms_per_step", none.ms_per_step}};
      std::printf("%6s %-10s %10s %10s %10s %12s\n", "K", "mode", "loop s", "ms/step", "overhead",
                  "stall/save");
      std::printf("%6s %-10s %10.2f %10.0f %10s %12s\n", "-", "none", none.loop_seconds,
                  none.ms_per_step, "-", "-");
      for (int k : demo_ks) {
        for (bool sync : {false, true}) {
          DemoRun r;
          if (!RunDemo(demo, demo_steps, k, sync, dir + "/demo", &r)) continue;
          const double ov = r.loop_seconds / none.loop_seconds - 1;
          dj["points"].push_back({{"k", k},
                                  {"mode", sync ? "sync" : "ackpt"},
                                  {"loop_seconds", r.loop_seconds},
                                  {"ms_per_step", r.ms_per_step},
                                  {"overhead", ov},
                                  {"stall_mean_ms", r.stall_mean_ms},
                                  {"periodic_stall_pct", r.periodic_stall_pct / 100.0}});
          std::printf("%6d %-10s %10.2f %10.0f %9.1f%% %10.1fms\n", k, sync ? "sync" : "ackpt",
                      r.loop_seconds, r.ms_per_step, ov * 100, r.stall_mean_ms);
          std::fflush(stdout);
        }
      }
    }
    j["demo_model"] = dj;
  }
  WriteJson(json_out, j);
  return 0;
}
