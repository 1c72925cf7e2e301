// Item 4 — compression ratio and speed on real tensors (Google Benchmark
// driver: bench/gbench_driver.h; repetitions randomly interleaved,
// median/min/max aggregates, JSON via --benchmark_out).
//
// Data sets (each in fp32 and bf16):
//   trained    a small MLP trained for --train-steps Adam steps on a synthetic
//              teacher-student regression task inside this benchmark: its
//              weights plus Adam's exp_avg / exp_avg_sq (the trainer layer's
//              demo model is not used here; see docs/BENCHMARKS.md)
//   randn      N(0, 0.02) tensors of the same total size
//   synthetic  the model-like state the other benchmarks save (weights
//              N(0, 0.02), exp_avg N(0, 1e-3), exp_avg_sq U(0, 1e-6))
// For each zstd level: ackpt's file (WriteStateDict, 4 MiB seekable frames,
// one thread, no fsync) next to the `zstd` CLI (-T1) on the plain safetensors
// stream of the same bytes: ratio and MB/s. Also, for reference, the ratio a
// byte-grouped split would reach (each tensor's bytes split into planes by
// byte position, then plain zstd at the same level; ackpt's own byte-grouped
// codec is measured by bench/codec.cc).
// Benchmarks: compression/ackpt/<set>/<dtype>/<level> and
// compression/zstd_cli/<set>/<dtype>/<level>, with counters file_bytes,
// ratio (plain safetensors bytes / file bytes), logical_bytes, bytes
// (tensor bytes), bytes_per_second (of logical bytes) and, on ackpt's,
// bytegrouped_ratio. Sets: trained, trained_weights, trained_adam, randn,
// synthetic (the label carries the long name).
//
//   ackpt_bench_compression [--levels 1,3,9] [--train-steps 200] [--size 16M]
//       [--dir DIR] [--quick] [--benchmark_repetitions=3] [--benchmark_out=FILE]
#include <c10/util/string_utils.h>
#include <zstd.h>

#include "gbench_driver.h"

using namespace bench;

namespace {

struct DataSet {
  std::string key, name, dtype;  // key: short name for benchmark names
  ackpt::StateDict state;
  std::vector<torch::Tensor> tensors;
  uint64_t bytes = 0;
};

struct TrainedModel {
  std::vector<torch::Tensor> weights, exp_avg, exp_avg_sq;
  std::vector<std::string> names;
  double first_loss = 0, last_loss = 0;
};

TrainedModel Train(int steps, int64_t width) {
  torch::manual_seed(7);
  torch::nn::Sequential teacher(torch::nn::Linear(256, 64), torch::nn::Tanh(),
                                torch::nn::Linear(64, 16));
  torch::nn::Sequential model(torch::nn::Linear(256, width), torch::nn::ReLU(),
                              torch::nn::LayerNorm(torch::nn::LayerNormOptions({width})),
                              torch::nn::Linear(width, width), torch::nn::ReLU(),
                              torch::nn::Linear(width, 16));
  torch::optim::Adam opt(model->parameters(), torch::optim::AdamOptions(1e-3));
  TrainedModel out;
  for (int s = 0; s < steps; ++s) {
    torch::Tensor x = torch::randn({32, 256});
    torch::Tensor y;
    {
      torch::NoGradGuard ng;
      y = teacher->forward(x);
    }
    torch::Tensor loss = torch::mse_loss(model->forward(x), y);
    opt.zero_grad();
    loss.backward();
    opt.step();
    if (s == 0) out.first_loss = loss.item<double>();
    out.last_loss = loss.item<double>();
  }
  for (const auto& p : model->named_parameters()) {
    auto it = opt.state().find(c10::guts::to_string(p.value().unsafeGetTensorImpl()));
    if (it == opt.state().end()) continue;
    auto& st = static_cast<torch::optim::AdamParamState&>(*it->second);
    out.names.push_back(p.key());
    out.weights.push_back(p.value().detach().clone());
    out.exp_avg.push_back(st.exp_avg().clone());
    out.exp_avg_sq.push_back(st.exp_avg_sq().clone());
  }
  return out;
}

DataSet FromTensors(const std::string& key, const std::string& name, torch::ScalarType dtype,
                    const std::vector<std::string>& names,
                    const std::vector<torch::Tensor>& tensors) {
  DataSet d;
  d.key = key;
  d.name = name;
  d.dtype = DtypeLabel(dtype);
  for (size_t i = 0; i < tensors.size(); ++i) {
    torch::Tensor t = tensors[i].to(dtype).contiguous();
    d.state.set(names[i], t);
    d.tensors.push_back(t);
    d.bytes += t.nbytes();
  }
  return d;
}

// Ratio of a byte-grouped codec: per tensor, bytes regrouped into planes by
// position within the element, then zstd in 4 MiB frames.
double ByteGroupedRatio(const DataSet& d, int level) {
  uint64_t in = 0, out = 0;
  ZSTD_CCtx* cctx = ZSTD_createCCtx();
  ZSTD_CCtx_setParameter(cctx, ZSTD_c_compressionLevel, level);
  const size_t chunk = size_t{4} << 20;
  std::vector<uint8_t> planes, dst(ZSTD_compressBound(chunk));
  for (const auto& t : d.tensors) {
    const size_t es = t.element_size(), n = t.numel();
    const auto* src = static_cast<const uint8_t*>(t.data_ptr());
    planes.resize(es * n);
    for (size_t b = 0; b < es; ++b) {
      uint8_t* p = planes.data() + b * n;
      for (size_t i = 0; i < n; ++i) p[i] = src[i * es + b];
    }
    for (size_t off = 0; off < planes.size(); off += chunk) {
      const size_t len = std::min(chunk, planes.size() - off);
      size_t r = ZSTD_compress2(cctx, dst.data(), dst.size(), planes.data() + off, len);
      if (!ZSTD_isError(r)) out += r;
    }
    in += planes.size();
  }
  ZSTD_freeCCtx(cctx);
  return out ? double(in) / double(out) : 0;
}

}  // namespace

int main(int argc, char** argv) {
  const bool quick = WantsQuick(argc, argv);
  Args a = InitGoogleBenchmark(
      argc, argv,
      "usage: ackpt_bench_compression [--levels 1,3,9] [--train-steps 200] [--size 16M] "
      "[--dir DIR] [--quick] [Google Benchmark flags]\n"
      "Defaults: 3 repetitions (--quick: level 1, 10 steps, 2M, 1 repetition), randomly "
      "interleaved.",
      {"quick"}, quick ? 1 : 3);
  a.Flag("quick");
  const auto levels = a.List("levels", quick ? "1" : "1,3,9");
  const int train_steps = static_cast<int>(a.Num("train-steps", quick ? 10 : 200));
  const uint64_t size = ParseBytes(a.Str("size", quick ? "2M" : "16M"));
  const std::string dir = a.Str("dir", "/tmp/ackpt-bench-compression");
  a.Done();
  FreshDir(dir);

  // The trained model: width chosen so weights + Adam state ~ size (fp32).
  const int64_t width =
      std::max<int64_t>(64, static_cast<int64_t>(std::sqrt(double(size) / 12.0)) / 64 * 64);
  const auto t0 = Clock::now();
  TrainedModel tm = Train(train_steps, width);
  const double train_s = Since(t0);
  std::printf("trained MLP 256-%lld-%lld-16 for %d Adam steps in %.1f s (loss %.4f -> %.4f)\n",
              static_cast<long long>(width), static_cast<long long>(width), train_steps, train_s,
              tm.first_loss, tm.last_loss);
  std::vector<std::string> tnames;
  std::vector<torch::Tensor> tt;
  for (size_t i = 0; i < tm.names.size(); ++i) {
    tnames.insert(tnames.end(), {"model/" + tm.names[i], "optim/" + tm.names[i] + "/exp_avg",
                                 "optim/" + tm.names[i] + "/exp_avg_sq"});
    tt.insert(tt.end(), {tm.weights[i], tm.exp_avg[i], tm.exp_avg_sq[i]});
  }
  uint64_t trained_fp32 = 0;
  for (const auto& t : tt) trained_fp32 += t.nbytes();
  std::vector<DataSet> sets;
  for (auto dt : {torch::kFloat32, torch::kBFloat16}) {
    sets.push_back(FromTensors("trained", "trained", dt, tnames, tt));
    // Weights only and Adam state only, split out of the trained set.
    std::vector<std::string> wn, an;
    std::vector<torch::Tensor> wt, at;
    for (size_t i = 0; i < tnames.size(); ++i) {
      (i % 3 == 0 ? wn : an).push_back(tnames[i]);
      (i % 3 == 0 ? wt : at).push_back(tt[i]);
    }
    sets.push_back(FromTensors("trained_weights", "trained weights", dt, wn, wt));
    sets.push_back(FromTensors("trained_adam", "trained Adam state", dt, an, at));
    torch::manual_seed(11);
    std::vector<torch::Tensor> rn;
    std::vector<std::string> rnames;
    const int64_t per = 1 << 20;  // 1 Mi elements per tensor
    for (int64_t i = 0; i * per * 4 < static_cast<int64_t>(trained_fp32); ++i) {
      rn.push_back(torch::randn({per}) * 0.02);
      rnames.push_back("randn/" + std::to_string(i));
    }
    sets.push_back(FromTensors("randn", "randn N(0,0.02)", dt, rnames, rn));
    ModelState ms = MakeModelState(trained_fp32, torch::kFloat32, 5);
    sets.push_back(FromTensors("synthetic", "synthetic model+Adam", dt, ms.names, ms.tensors));
  }
  const bool have_zstd = HaveProgram("zstd");

  std::string level_list;
  for (const auto& l : levels) level_list += (level_list.empty() ? "" : ",") + l;
  benchmark::AddCustomContext("ackpt_benchmark", "compression");
  benchmark::AddCustomContext("train_steps", std::to_string(train_steps));
  benchmark::AddCustomContext("train_seconds", std::to_string(train_s));
  benchmark::AddCustomContext("model", "MLP 256-" + std::to_string(width) + "-" +
                                           std::to_string(width) +
                                           "-16 (LayerNorm), Adam lr 1e-3, batch 32");
  benchmark::AddCustomContext("loss_first", std::to_string(tm.first_loss));
  benchmark::AddCustomContext("loss_last", std::to_string(tm.last_loss));
  benchmark::AddCustomContext("levels", level_list);
  benchmark::AddCustomContext("zstd_cli", have_zstd ? "true" : "false");

  // Every data set's plain safetensors stream: the bytes the ratios are of
  // and the input of the zstd CLI.
  for (const auto& d : sets) {
    const std::string plain = dir + "/" + d.key + "_" + d.dtype + ".safetensors";
    ackpt::WriteOptions wo;
    wo.compression = ackpt::Compression::kNone;
    wo.fsync = false;
    ackpt::WriteStateDict(d.state, plain, wo);
    const uint64_t logical = FileSize(plain);
    for (const auto& ls : levels) {
      const int level = std::stoi(ls);
      const std::string suffix = d.key + "/" + d.dtype + "/" + ls;
      const double bytegrouped = ByteGroupedRatio(d, level);
      const DataSet* set = &d;
      auto common = [logical, set](benchmark::State& state, uint64_t file_bytes) {
        state.counters["file_bytes"] = static_cast<double>(file_bytes);
        state.counters["ratio"] = double(logical) / double(file_bytes);
        state.counters["logical_bytes"] = static_cast<double>(logical);
        state.counters["bytes"] = static_cast<double>(set->bytes);
        state.SetLabel(set->name);
      };
      Measure("compression/ackpt/" + suffix, logical, [=, &dir](benchmark::State& state) {
        const std::string p = dir + "/ackpt.safetensors.zst";
        ackpt::WriteOptions wo;
        wo.zstd_level = level;
        wo.writer_threads = 1;
        wo.fsync = false;
        const auto c0 = Clock::now();
        const ackpt::WriteResult wr = ackpt::WriteStateDict(set->state, p, wo);
        const double s = Since(c0);
        std::remove(p.c_str());
        common(state, wr.file_bytes);
        state.counters["bytegrouped_ratio"] = bytegrouped;
        return s;
      });
      if (!have_zstd) continue;
      Measure("compression/zstd_cli/" + suffix, logical, [=, &dir](benchmark::State& state) {
        const std::string o = dir + "/cli.zst";
        const auto c0 = Clock::now();
        const int rc = RunProcess({"zstd", "-" + ls, "-T1", "-q", "-f", plain, "-o", o});
        const double s = Since(c0);
        if (rc != 0) throw std::runtime_error("zstd exited with " + std::to_string(rc));
        common(state, FileSize(o));
        std::remove(o.c_str());
        return s;
      });
    }
  }
  const int rc = RunGoogleBenchmarks();
  RemoveTree(dir);
  return rc;
}
