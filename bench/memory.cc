// Item 5 — memory: peak RSS during save and load against the state size, and
// RSS after many saves against after a few (no growth).
//
// Every measurement runs in a fresh child process (this program re-executed
// with --child), so peaks never mix. In the child, the peak (VmHWM) is reset
// to the current RSS right before the measured operation when the kernel
// allows it (/proc/self/clear_refs "5"), so it reports the peak of that
// operation alone; the JSON says whether the reset worked.
//   save_ackpt      DefaultCheckpointer::save(force = true), zstd (default)
//   save_ackpt_none the same, compression none
//   save_torch      torch::save(tensors) + fsync
//   load_ackpt      ackpt::ReadStateDict of the zstd file
//   load_ackpt_none ackpt::ReadStateDict of the plain safetensors file
//   load_torch      torch::load(tensors) of the torch::save file
//   growth          RSS after 10 .. N saves of a small state (fsync off)
// extra = peak - RSS before the operation; reported as a multiple of the state.
//
//   ackpt_bench_memory [--size 256M] [--growth-saves 200] [--growth-size 16M]
//       [--dir DIR] [--json FILE] [--quick]
#include "bench_common.h"

using namespace bench;

namespace {

json Child(const std::string& mode, uint64_t size, const std::string& dir, int growth_saves) {
  json r;
  r["mode"] = mode;
  torch::ones({16}).sum();  // initialize LibTorch before the baseline
  const std::string ack_z = dir + "/state.safetensors.zst", ack_n = dir + "/state.safetensors",
                    torch_file = dir + "/state.pt";
  if (mode == "growth") {
    ModelState st = MakeModelState(size, torch::kFloat32, 4);
    ackpt::DefaultCheckpointerArguments args;
    args.save_dir = dir + "/growth";
    args.log_level = "WARN";
    args.fsync = false;
    args.retention.keep_last = 2;
    ackpt::DefaultCheckpointer ck(args);
    json points = json::array();
    for (int i = 1; i <= growth_saves; ++i) {
      st.tensors.back().add_(1.0);
      ck.save(st.checkpoint, i);
      if (i == 10 || i % 25 == 0 || i == growth_saves) {
        ck.wait();
        points.push_back({{"saves", i}, {"rss", RssBytes()}});
      }
    }
    ck.wait();
    r["points"] = points;
    r["bytes"] = st.bytes;
    r["staging_peak"] = ck.counters().staging_bytes_peak;
    return r;
  }
  std::unique_ptr<ModelState> st;
  if (mode.rfind("save", 0) == 0)
    st = std::make_unique<ModelState>(MakeModelState(size, torch::kFloat32, 4));
  const bool reset = ResetPeakRss();
  const uint64_t before = RssBytes();
  uint64_t bytes = 0;
  const auto t0 = Clock::now();
  if (mode == "save_ackpt" || mode == "save_ackpt_none") {
    ackpt::DefaultCheckpointerArguments args;
    args.save_dir = dir + "/save_" + mode;
    args.log_level = "WARN";
    if (mode == "save_ackpt_none") args.compression = ackpt::Compression::kNone;
    ackpt::DefaultCheckpointer ck(args);
    ck.save(st->checkpoint, 1, /*force=*/true);
    bytes = st->bytes;
  } else if (mode == "save_torch") {
    const std::string p = dir + "/save_torch.pt";
    torch::save(st->tensors, p);
    FsyncPath(p);
    bytes = st->bytes;
  } else if (mode == "load_ackpt" || mode == "load_ackpt_none") {
    ackpt::StateDict d = ackpt::ReadStateDict(mode == "load_ackpt" ? ack_z : ack_n);
    bytes = d.tensor_bytes();
    r["after"] = RssBytes();
  } else if (mode == "load_torch") {
    std::vector<torch::Tensor> ts;
    torch::load(ts, torch_file);
    for (const auto& t : ts) bytes += t.nbytes();
    r["after"] = RssBytes();
  } else {
    throw std::invalid_argument("unknown child mode " + mode);
  }
  r["seconds"] = Since(t0);
  const uint64_t peak = PeakRssBytes();
  r["peak_reset"] = reset;
  r["before"] = before;
  r["peak"] = peak;
  r["bytes"] = bytes;
  r["extra"] = peak > before ? peak - before : 0;
  r["extra_over_state"] = bytes ? double(peak > before ? peak - before : 0) / double(bytes) : 0;
  return r;
}

}  // namespace

int main(int argc, char** argv) {
  Args a(argc, argv,
         "usage: ackpt_bench_memory [--size 256M] [--growth-saves 200] [--growth-size 16M] [--dir "
         "DIR] [--json FILE] "
         "[--quick]",
         {"quick"});
  const bool quick = a.Flag("quick");
  const std::string child = a.Str("child", "");
  const uint64_t size = ParseBytes(a.Str("size", quick ? "8M" : "256M"));
  const int growth_saves = static_cast<int>(a.Num("growth-saves", quick ? 20 : 200));
  const uint64_t growth_size = ParseBytes(a.Str("growth-size", quick ? "4M" : "16M"));
  const std::string dir = a.Str("dir", "/tmp/ackpt-bench-memory");
  const std::string json_out = a.Str("json", "");
  a.Done();

  if (!child.empty()) {
    json r = Child(child, child == "growth" ? growth_size : size, dir, growth_saves);
    std::printf("%s\n", r.dump().c_str());
    return 0;
  }

  FreshDir(dir);
  uint64_t state_bytes = 0;
  {
    // Files the load measurements read.
    ModelState st = MakeModelState(size, torch::kFloat32, 4);
    state_bytes = st.bytes;
    const ackpt::StateDict flat = FlatStateDict(st);
    ackpt::WriteStateDict(flat, dir + "/state.safetensors.zst");
    ackpt::WriteOptions none;
    none.compression = ackpt::Compression::kNone;
    ackpt::WriteStateDict(flat, dir + "/state.safetensors", none);
    torch::save(st.tensors, dir + "/state.pt");
  }
  std::printf("state %.1f MiB (fp32 model + Adam); each measurement in a fresh process\n",
              state_bytes / 1048576.0);
  json j = RunInfo("memory", quick);
  j["bytes"] = state_bytes;
  j["growth_size"] = growth_size;
  j["growth_saves"] = growth_saves;
  const std::string self = SelfExe();
  std::printf("\n%-16s %10s %10s %10s %12s %8s\n", "operation", "state MB", "before MB", "peak MB",
              "extra/state", "seconds");
  for (const std::string mode : {"save_ackpt", "save_ackpt_none", "save_torch", "load_ackpt",
                                 "load_ackpt_none", "load_torch", "growth"}) {
    const std::string out = dir + "/child_" + mode + ".json";
    std::vector<std::string> argv_child{self,
                                        "--child",
                                        mode,
                                        "--size",
                                        std::to_string(size),
                                        "--dir",
                                        dir,
                                        "--growth-saves",
                                        std::to_string(growth_saves),
                                        "--growth-size",
                                        std::to_string(growth_size)};
    const int rc = RunProcess(argv_child, out);
    json r;
    try {
      std::ifstream in(out);
      in >> r;
    } catch (const std::exception& e) {
      r = json{{"mode", mode}, {"error", std::string("child failed: rc ") + std::to_string(rc)}};
    }
    r["rc"] = rc;
    j["results"][mode] = r;
    if (mode == "growth") {
      if (r.contains("points")) {
        const auto& p = r["points"];
        const double first = p.front()["rss"].get<double>(), last = p.back()["rss"].get<double>();
        j["results"][mode]["growth_bytes"] = last - first;
        std::printf(
            "RSS after %d saves of %.0f MiB: %.1f MB; after %d: %.1f MB (growth %+.1f MB)\n",
            p.front()["saves"].get<int>(), growth_size / 1048576.0, first / 1e6,
            p.back()["saves"].get<int>(), last / 1e6, (last - first) / 1e6);
      }
      continue;
    }
    if (!r.contains("peak")) {
      std::printf("%-16s failed (rc %d)\n", mode.c_str(), rc);
      continue;
    }
    std::printf("%-16s %10.1f %10.1f %10.1f %12.2f %8.2f%s\n", mode.c_str(),
                r["bytes"].get<double>() / 1e6, r["before"].get<double>() / 1e6,
                r["peak"].get<double>() / 1e6, r["extra_over_state"].get<double>(),
                r["seconds"].get<double>(),
                r["peak_reset"].get<bool>() ? "" : "  (peak not reset)");
    std::fflush(stdout);
  }
  WriteJson(json_out, j);
  RemoveTree(dir);
  return 0;
}
