// Item 4 — compression ratio and speed on real tensors.
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
// byte-grouped codec would reach (each tensor's bytes split into planes by
// byte position, then zstd at the same level) — not something ackpt writes.
//
//   ackpt_bench_compression [--levels 1,3,9] [--train-steps 200] [--size 16M]
//       [--reps 3] [--dir DIR] [--json FILE] [--quick]
#include <c10/util/string_utils.h>
#include <zstd.h>

#include "bench_common.h"

using namespace bench;

namespace {

struct DataSet {
  std::string name, dtype;
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

DataSet FromTensors(const std::string& name, torch::ScalarType dtype,
                    const std::vector<std::string>& names,
                    const std::vector<torch::Tensor>& tensors) {
  DataSet d;
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
  Args a(argc, argv,
         "usage: ackpt_bench_compression [--levels 1,3,9] [--train-steps 200] [--size 16M] [--reps "
         "3] [--dir DIR] "
         "[--json FILE] [--quick]",
         {"quick"});
  const bool quick = a.Flag("quick");
  const auto levels = a.List("levels", quick ? "1" : "1,3,9");
  const int train_steps = static_cast<int>(a.Num("train-steps", quick ? 10 : 200));
  const uint64_t size = ParseBytes(a.Str("size", quick ? "2M" : "16M"));
  const int reps = std::max(1, static_cast<int>(a.Num("reps", quick ? 1 : 3)));
  const std::string dir = a.Str("dir", "/tmp/ackpt-bench-compression");
  const std::string json_out = a.Str("json", "");
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
    sets.push_back(FromTensors("trained", dt, tnames, tt));
    // Weights only and Adam state only, split out of the trained set.
    std::vector<std::string> wn, an;
    std::vector<torch::Tensor> wt, at;
    for (size_t i = 0; i < tnames.size(); ++i) {
      (i % 3 == 0 ? wn : an).push_back(tnames[i]);
      (i % 3 == 0 ? wt : at).push_back(tt[i]);
    }
    sets.push_back(FromTensors("trained weights", dt, wn, wt));
    sets.push_back(FromTensors("trained Adam state", dt, an, at));
    torch::manual_seed(11);
    std::vector<torch::Tensor> rn;
    std::vector<std::string> rnames;
    const int64_t per = 1 << 20;  // 1 Mi elements per tensor
    for (int64_t i = 0; i * per * 4 < static_cast<int64_t>(trained_fp32); ++i) {
      rn.push_back(torch::randn({per}) * 0.02);
      rnames.push_back("randn/" + std::to_string(i));
    }
    sets.push_back(FromTensors("randn N(0,0.02)", dt, rnames, rn));
    ModelState ms = MakeModelState(trained_fp32, torch::kFloat32, 5);
    sets.push_back(FromTensors("synthetic model+Adam", dt, ms.names, ms.tensors));
  }
  const bool have_zstd = HaveProgram("zstd");

  json j = RunInfo("compression", quick);
  j["train_steps"] = train_steps;
  j["train_seconds"] = train_s;
  j["model"] = "MLP 256-" + std::to_string(width) + "-" + std::to_string(width) +
               "-16 (LayerNorm), Adam lr 1e-3, batch 32";
  j["loss_first"] = tm.first_loss;
  j["loss_last"] = tm.last_loss;
  j["levels"] = levels;
  j["reps"] = reps;
  j["rows"] = json::array();
  std::printf("\n%-22s %-5s %6s %5s %9s %9s %10s %10s %9s %9s\n", "data", "dtype", "MiB", "level",
              "ackpt", "zstd CLI", "ackpt MB/s", "CLI MB/s", "size diff", "bytegroup");
  for (const auto& d : sets) {
    const std::string plain = dir + "/plain.safetensors";
    {
      ackpt::WriteOptions wo;
      wo.compression = ackpt::Compression::kNone;
      wo.fsync = false;
      ackpt::WriteStateDict(d.state, plain, wo);
    }
    const uint64_t logical = FileSize(plain);
    for (const auto& ls : levels) {
      const int level = std::stoi(ls);
      std::vector<double> ack_s, cli_s;
      uint64_t ack_bytes = 0, cli_bytes = 0;
      for (int r = 0; r < reps; ++r) {
        const std::string p = dir + "/ackpt.safetensors.zst";
        ackpt::WriteOptions wo;
        wo.zstd_level = level;
        wo.threads = 1;
        wo.fsync = false;
        auto c0 = Clock::now();
        ackpt::WriteResult wr = ackpt::WriteStateDict(d.state, p, wo);
        ack_s.push_back(Since(c0));
        ack_bytes = wr.file_bytes;
        std::remove(p.c_str());
        if (have_zstd) {
          const std::string o = dir + "/cli.zst";
          c0 = Clock::now();
          int rc = RunProcess({"zstd", "-" + ls, "-T1", "-q", "-f", plain, "-o", o});
          cli_s.push_back(Since(c0));
          if (rc == 0) cli_bytes = FileSize(o);
          std::remove(o.c_str());
        }
      }
      const double bg = ByteGroupedRatio(d, level);
      const Stat as = Summarize(ack_s), cs = Summarize(cli_s);
      json row;
      row["data"] = d.name;
      row["dtype"] = d.dtype;
      row["bytes"] = d.bytes;
      row["logical_bytes"] = logical;
      row["level"] = level;
      row["ackpt_file_bytes"] = ack_bytes;
      row["ackpt_ratio"] = double(logical) / double(ack_bytes);
      row["ackpt_seconds"] = ToJson(as);
      row["ackpt_mbps"] = logical / as.median / 1e6;
      row["bytegrouped_ratio"] = bg;
      if (cli_bytes) {
        row["cli_file_bytes"] = cli_bytes;
        row["cli_ratio"] = double(logical) / double(cli_bytes);
        row["cli_seconds"] = ToJson(cs);
        row["cli_mbps"] = logical / cs.median / 1e6;
        row["size_vs_cli"] = double(ack_bytes) / double(cli_bytes) - 1.0;
      }
      j["rows"].push_back(row);
      std::printf("%-22s %-5s %6.1f %5d %9.4f %9.4f %10.0f %10.0f %+8.2f%% %9.4f\n", d.name.c_str(),
                  d.dtype.c_str(), d.bytes / 1048576.0, level, row["ackpt_ratio"].get<double>(),
                  cli_bytes ? row["cli_ratio"].get<double>() : 0.0, row["ackpt_mbps"].get<double>(),
                  cli_bytes ? row["cli_mbps"].get<double>() : 0.0,
                  cli_bytes ? row["size_vs_cli"].get<double>() * 100 : 0.0, bg);
      std::fflush(stdout);
    }
    std::remove(plain.c_str());
  }
  WriteJson(json_out, j);
  RemoveTree(dir);
  return 0;
}
