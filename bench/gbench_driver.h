// Google Benchmark glue for the end-to-end drivers (stall, throughput,
// compression). Every measurement is one benchmark whose repetitions each run
// the operation once and report its time by hand (UseManualTime): what is
// timed is one save, one write or one compression of a whole state, often
// with untimed work around it (waiting for the background write, removing
// the file), so Google Benchmark's own iteration loop cannot time it.
//
// Defaults the drivers set (the command line overrides every one of them):
//   --benchmark_repetitions=N           N per driver (--quick: fewer)
//   --benchmark_enable_random_interleaving=true
//                                       repetitions of every benchmark run in
//                                       random order, so drift in machine load
//                                       hits every method alike
//   --benchmark_display_aggregates_only=true
//                                       the console shows median/min/max/mean;
//                                       --benchmark_out JSON keeps every
//                                       repetition too (bench/report.py reads it)
// Aggregates: Google Benchmark's mean, median, stddev and cv, plus min and max.
#pragma once

#include <benchmark/benchmark.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <exception>
#include <functional>
#include <string>
#include <vector>

#include "bench_common.h"

namespace bench {

namespace gbench_detail {
inline std::string& Usage() {
  static std::string usage;
  return usage;
}
inline std::atomic<int>& Failures() {
  static std::atomic<int> failures{0};
  return failures;
}
inline void PrintHelp() {
  std::printf("%s\n\nGoogle Benchmark options:\n", Usage().c_str());
  benchmark::PrintDefaultHelp();
}
inline double Min(const std::vector<double>& v) {
  return v.empty() ? 0.0 : *std::min_element(v.begin(), v.end());
}
inline double Max(const std::vector<double>& v) {
  return v.empty() ? 0.0 : *std::max_element(v.begin(), v.end());
}
inline bool HasFlag(int argc, char** argv, const char* prefix) {
  for (int i = 1; i < argc; ++i) {
    if (std::strncmp(argv[i], prefix, std::strlen(prefix)) == 0) return true;
  }
  return false;
}
}  // namespace gbench_detail

// True when the command line asks for --quick (read before Google Benchmark
// parses it, because the quick defaults include the repetition count).
inline bool WantsQuick(int argc, char** argv) {
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--quick") == 0) return true;
  }
  return false;
}

// Parses Google Benchmark's flags with this driver's defaults, then returns
// the driver's own options (unknown ones exit with status 2).
inline Args InitGoogleBenchmark(int argc, char** argv, const std::string& usage,
                                std::set<std::string> flags, int default_repetitions) {
  gbench_detail::Usage() = usage;
  std::vector<std::string> defaults;
  if (!gbench_detail::HasFlag(argc, argv, "--benchmark_repetitions")) {
    defaults.push_back("--benchmark_repetitions=" + std::to_string(default_repetitions));
  }
  if (!gbench_detail::HasFlag(argc, argv, "--benchmark_enable_random_interleaving")) {
    defaults.push_back("--benchmark_enable_random_interleaving=true");
  }
  if (!gbench_detail::HasFlag(argc, argv, "--benchmark_display_aggregates_only")) {
    defaults.push_back("--benchmark_display_aggregates_only=true");
  }
  static std::vector<std::string> storage;  // argv strings outlive main's use of them
  storage.assign(argv, argv + argc);
  storage.insert(storage.begin() + 1, defaults.begin(), defaults.end());
  static std::vector<char*> args;
  args.clear();
  for (auto& s : storage) args.push_back(s.data());
  args.push_back(nullptr);
  int n = static_cast<int>(storage.size());
  benchmark::Initialize(&n, args.data(), gbench_detail::PrintHelp);
  return Args(n, args.data(), usage, std::move(flags));
}

// True if --benchmark_enable_random_interleaving is on (the default here):
// then any benchmark may run after any other, so drivers keep every state's
// fixture alive for the whole run instead of one at a time.
inline bool Interleaving(int argc, char** argv) {
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a.rfind("--benchmark_enable_random_interleaving=", 0) == 0) {
      const std::string v = a.substr(a.find('=') + 1);
      return v == "true" || v == "1" || v == "yes";
    }
  }
  return true;
}

// Registers `name`: each repetition calls `once`, which runs the operation,
// may set counters on the state, and returns the seconds to report.
// `bytes` (logical bytes per run) gives the bytes_per_second counter; 0 for none.
inline benchmark::internal::Benchmark* Measure(const std::string& name, uint64_t bytes,
                                               std::function<double(benchmark::State&)> once) {
  auto* b = benchmark::RegisterBenchmark(
      name.c_str(), [bytes, once = std::move(once)](benchmark::State& state) {
        for (auto _ : state) {
          try {
            state.SetIterationTime(once(state));
          } catch (const std::exception& e) {
            ++gbench_detail::Failures();
            state.SkipWithError(e.what());
            break;
          }
        }
        if (bytes > 0) state.SetBytesProcessed(static_cast<int64_t>(bytes) * state.iterations());
      });
  b->UseManualTime()
      ->Iterations(1)
      ->Unit(benchmark::kMillisecond)
      ->ComputeStatistics("min", gbench_detail::Min)
      ->ComputeStatistics("max", gbench_detail::Max);
  return b;
}

// Runs every registered benchmark; returns the process exit status (1 if any
// measurement failed).
inline int RunGoogleBenchmarks() {
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return gbench_detail::Failures() > 0 ? 1 : 0;
}

}  // namespace bench
