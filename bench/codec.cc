// The byte-grouped codec (Compression::kZstdByteGrouped) against zstd -1 and
// -3 on the same bytes: ratio, compression and decompression GB/s per thread.
//
// Data: the demo's checkpoint split into parameters, Adam exp_avg and
// exp_avg_sq (fp32 as saved, and the parameters cast to bf16), synthetic
// N(0, 0.02) weights / exp_avg N(0, 1e-3) / exp_avg_sq U(0, 1e-6) in fp32,
// bf16 and fp16, and the model-like states the other benchmarks save. Each
// set is laid out as the writer lays out a data section and cut into the
// writer's 4 MiB frames; every codec encodes and decodes exactly those frames
// on one thread (the writer and the reader run one frame per thread), with
// the checks the reader runs (zstd's content checksum; the byte-grouped
// frame's XXH64). Repetitions interleave the codecs; medians are reported.
// Also: grouping / ungrouping GB/s (SSE2 kernels against the plain scalar
// loop) and the plane-coder variants that justify the adaptive choice.
//
//   ackpt_bench_codec [--demo FILE] [--size 32M] [--reps 5] [--json FILE] [--quick]
#include "format/codec.h"

#include <zstd.h>

#include "bench_common.h"
#include "format/transpose.h"

using namespace bench;
namespace codec = ackpt::format::codec;

namespace {

struct Set {
  std::string name, kind, dtype;
  std::vector<uint8_t> bytes;
  codec::Layout layout;  // spans in `bytes`
};

void Append(Set* s, const torch::Tensor& t0) {
  const torch::Tensor t = t0.contiguous();
  const auto* p = static_cast<const uint8_t*>(t.data_ptr());
  const uint64_t b = s->bytes.size();
  s->bytes.insert(s->bytes.end(), p, p + t.nbytes());
  if (t.nbytes() > 0)
    s->layout.push_back({b, b + t.nbytes(), static_cast<uint32_t>(t.element_size())});
}

Set MakeSet(const std::string& name, const std::string& kind, torch::ScalarType dtype,
            const std::vector<torch::Tensor>& ts) {
  Set s;
  s.name = name;
  s.kind = kind;
  s.dtype = DtypeLabel(dtype);
  // Largest element size first, as the writer orders them.
  std::vector<torch::Tensor> sorted;
  for (const auto& t : ts) sorted.push_back(t.to(dtype));
  std::stable_sort(sorted.begin(), sorted.end(),
                   [](const torch::Tensor& a, const torch::Tensor& b) {
                     return a.element_size() > b.element_size();
                   });
  for (const auto& t : sorted) Append(&s, t);
  return s;
}

struct Frame {
  uint64_t off;
  size_t n;
  std::vector<codec::Segment> segs;
};

std::vector<Frame> Frames(const Set& s, size_t chunk) {
  std::vector<Frame> f;
  for (uint64_t off = 0; off < s.bytes.size(); off += chunk) {
    const size_t n = static_cast<size_t>(std::min<uint64_t>(chunk, s.bytes.size() - off));
    f.push_back({off, n, codec::SegmentsOf(s.layout, off, n)});
  }
  return f;
}

struct Codec {
  std::string name;
  std::function<void(const Frame&, const uint8_t*, std::string*)> enc;
  std::function<void(const Frame&, const std::string&, uint8_t*)> dec;
};

void ZstdDecode(const Frame& f, const std::string& c, uint8_t* dst) {
  thread_local ZSTD_DCtx* d = ZSTD_createDCtx();
  const size_t r = ZSTD_decompressDCtx(d, dst, f.n, c.data(), c.size());
  if (ZSTD_isError(r) || r != f.n) throw std::runtime_error("zstd decode failed");
}

std::vector<Codec> Codecs(bool variants) {
  std::vector<Codec> cs;
  for (int level : {1, 3}) {
    cs.push_back({"zstd -" + std::to_string(level),
                  [level](const Frame& f, const uint8_t* p, std::string* o) {
                    codec::EncodeZstdFrame(p, f.n, level, o);
                  },
                  ZstdDecode});
  }
  // As the reader dispatches: byte-grouped frame or (fallback) zstd frame.
  auto decode = [](const Frame& f, const std::string& c, uint8_t* dst) {
    if (codec::IsGroupedFrame(c.data(), c.size())) {
      codec::DecodeGroupedFrame(reinterpret_cast<const uint8_t*>(c.data()), c.size(), f.segs, dst,
                                f.n, "bench");
    } else {
      ZstdDecode(f, c, dst);
    }
  };
  auto grouped = [decode](const std::string& name, codec::PlaneCoder pc) {
    return Codec{name,
                 [pc](const Frame& f, const uint8_t* p, std::string* o) {
                   codec::EncodeGroupedFrame(p, f.n, f.segs, 1, o, pc);
                 },
                 decode};
  };
  // What kZstdByteGrouped writes (with its plain-zstd fallback for runs).
  cs.push_back({"byte-grouped",
                [](const Frame& f, const uint8_t* p, std::string* o) {
                  codec::EncodeByteGroupedDataFrame(p, f.n, f.segs, 1, o);
                },
                decode});
  if (variants) {
    cs.push_back(grouped("grouped, planes adaptive", codec::PlaneCoder::kAdaptive));
    cs.push_back(grouped("grouped, planes zstd -1", codec::PlaneCoder::kZstd));
    cs.push_back(grouped("grouped, planes Huffman", codec::PlaneCoder::kHuffman));
  }
  return cs;
}

struct Result {
  uint64_t out_bytes = 0;
  std::vector<double> enc_s, dec_s;
};

// The scalar transposition the SSE2 kernels replace, for the record.
__attribute__((noinline)) void ScalarGroup4(const uint8_t* src, size_t m, uint8_t* const* p) {
  for (size_t i = 0; i < m; ++i)
    for (size_t j = 0; j < 4; ++j) p[j][i] = src[i * 4 + j];
}
__attribute__((noinline)) void ScalarUngroup4(const uint8_t* const* p, size_t m, uint8_t* dst) {
  for (size_t i = 0; i < m; ++i)
    for (size_t j = 0; j < 4; ++j) dst[i * 4 + j] = p[j][i];
}

json TransposeSpeeds(int reps) {
  json rows = json::array();
  const size_t n = size_t{4} << 20;
  std::vector<uint8_t> src(n), planes(n), back(n);
  for (size_t i = 0; i < n; ++i) src[i] = static_cast<uint8_t>(i * 2654435761u >> 13);
  for (size_t k : {2, 4, 8}) {
    const size_t m = n / k;
    std::vector<uint8_t*> p(k);
    for (size_t j = 0; j < k; ++j) p[j] = planes.data() + j * m;
    std::vector<const uint8_t*> q(p.begin(), p.end());
    std::vector<double> g, u, gs, us;
    for (int r = 0; r < reps; ++r) {
      auto t0 = Clock::now();
      codec::Group(src.data(), m, k, p.data());
      g.push_back(Since(t0));
      t0 = Clock::now();
      codec::Ungroup(q.data(), m, k, back.data());
      u.push_back(Since(t0));
      if (k == 4) {
        t0 = Clock::now();
        ScalarGroup4(src.data(), m, p.data());
        gs.push_back(Since(t0));
        t0 = Clock::now();
        ScalarUngroup4(q.data(), m, back.data());
        us.push_back(Since(t0));
      }
    }
    if (back != src) throw std::runtime_error("transposition round trip failed");
    json row;
    row["elem_size"] = k;
    row["group_gbps"] = n / Summarize(g).median / 1e9;
    row["ungroup_gbps"] = n / Summarize(u).median / 1e9;
    if (k == 4) {
      row["scalar_group_gbps"] = n / Summarize(gs).median / 1e9;
      row["scalar_ungroup_gbps"] = n / Summarize(us).median / 1e9;
    }
    rows.push_back(row);
  }
  return rows;
}

}  // namespace

int main(int argc, char** argv) {
  Args a(argc, argv,
         "usage: ackpt_bench_codec [--demo FILE] [--size 32M] [--reps 5] [--json FILE] [--quick]",
         {"quick"});
  const bool quick = a.Flag("quick");
  const std::string demo = a.Str("demo", "");
  const uint64_t size = ParseBytes(a.Str("size", quick ? "2M" : "32M"));
  const int reps = std::max(1, static_cast<int>(a.Num("reps", quick ? 1 : 5)));
  const std::string json_out = a.Str("json", "");
  (void)a.Str("dir", "");  // accepted like every driver's; nothing is written to disk
  a.Done();
  const size_t chunk = size_t{4} << 20;

  std::vector<Set> sets;
  if (!demo.empty()) {
    auto reader = ackpt::CheckpointReader::Open(demo);
    std::vector<std::string> names;
    for (const auto& t : reader->info().tensors) names.push_back(t.name);
    auto ts = reader->ReadTensors(names);
    std::vector<torch::Tensor> params, m1, m2;
    for (const auto& [name, t] : ts) {
      if (!t.is_floating_point()) continue;
      auto ends = [&](const std::string& s) {
        return name.size() >= s.size() && name.compare(name.size() - s.size(), s.size(), s) == 0;
      };
      if (ends("/exp_avg"))
        m1.push_back(t);
      else if (ends("/exp_avg_sq"))
        m2.push_back(t);
      else if (name.rfind("module_interface_state/", 0) == 0)
        params.push_back(t);
    }
    sets.push_back(MakeSet("demo", "parameters", torch::kFloat32, params));
    sets.push_back(MakeSet("demo", "exp_avg", torch::kFloat32, m1));
    sets.push_back(MakeSet("demo", "exp_avg_sq", torch::kFloat32, m2));
    sets.push_back(MakeSet("demo", "parameters", torch::kBFloat16, params));
  }
  {
    torch::manual_seed(3);
    const int64_t n = static_cast<int64_t>(size / 4);
    const auto w = torch::randn({n}) * 0.02;
    const auto m1 = torch::randn({n}) * 1e-3;
    const auto m2 = torch::rand({n}) * 1e-6;
    for (auto dt : {torch::kFloat32, torch::kBFloat16, torch::kFloat16}) {
      sets.push_back(MakeSet("synthetic", "parameters", dt, {w}));
      sets.push_back(MakeSet("synthetic", "exp_avg", dt, {m1}));
      sets.push_back(MakeSet("synthetic", "exp_avg_sq", dt, {m2}));
    }
  }
  for (auto dt : {torch::kFloat32, torch::kBFloat16}) {
    ModelState ms = MakeModelState(size, dt, 5);
    sets.push_back(MakeSet("bench state", "model+Adam", dt, ms.tensors));
  }

  const auto codecs = Codecs(/*variants=*/true);
  json j = RunInfo("codec", quick);
  j["reps"] = reps;
  j["chunk_bytes"] = chunk;
  j["demo"] = demo;
  j["rows"] = json::array();
  std::printf("%-12s %-11s %-5s %7s  %-26s %7s %8s %9s %9s %9s\n", "data", "kind", "dtype", "MiB",
              "codec", "ratio", "vs z-1", "comp GB/s", "dec GB/s", "planes");
  for (const auto& s : sets) {
    const auto frames = Frames(s, chunk);
    std::vector<Result> res(codecs.size());
    std::vector<std::string> enc(frames.size());
    std::vector<uint8_t> out(s.bytes.size());
    codec::FrameStats stats;
    for (int r = 0; r < reps; ++r) {
      for (size_t c = 0; c < codecs.size(); ++c) {  // interleaved
        uint64_t total = 0;
        auto t0 = Clock::now();
        for (size_t f = 0; f < frames.size(); ++f) {
          codecs[c].enc(frames[f], s.bytes.data() + frames[f].off, &enc[f]);
          total += enc[f].size();
        }
        res[c].enc_s.push_back(Since(t0));
        res[c].out_bytes = total;
        t0 = Clock::now();
        for (size_t f = 0; f < frames.size(); ++f)
          codecs[c].dec(frames[f], enc[f], out.data() + frames[f].off);
        res[c].dec_s.push_back(Since(t0));
        if (out != s.bytes) throw std::runtime_error(codecs[c].name + ": round trip differs");
      }
    }
    for (const auto& f : frames) {
      std::string tmp;
      codec::EncodeByteGroupedDataFrame(s.bytes.data() + f.off, f.n, f.segs, 1, &tmp, &stats);
    }
    const double z1 = static_cast<double>(res[0].out_bytes);
    for (size_t c = 0; c < codecs.size(); ++c) {
      json row;
      row["data"] = s.name;
      row["kind"] = s.kind;
      row["dtype"] = s.dtype;
      row["bytes"] = s.bytes.size();
      row["codec"] = codecs[c].name;
      row["out_bytes"] = res[c].out_bytes;
      row["ratio"] = double(s.bytes.size()) / double(res[c].out_bytes);
      row["size_vs_zstd1"] = double(res[c].out_bytes) / z1 - 1.0;
      row["compress_gbps"] = s.bytes.size() / Summarize(res[c].enc_s).median / 1e9;
      row["decompress_gbps"] = s.bytes.size() / Summarize(res[c].dec_s).median / 1e9;
      row["compress_seconds"] = ToJson(Summarize(res[c].enc_s));
      row["decompress_seconds"] = ToJson(Summarize(res[c].dec_s));
      char planes[64] = "";
      if (codecs[c].name == "byte-grouped") {
        row["planes"] = {{"raw", stats.raw_streams},
                         {"zstd", stats.zstd_streams},
                         {"huffman", stats.huffman_streams},
                         {"plain_zstd_frames", stats.plain_zstd_frames}};
        std::snprintf(planes, sizeof planes, "r%llu z%llu h%llu f%llu",
                      static_cast<unsigned long long>(stats.raw_streams),
                      static_cast<unsigned long long>(stats.zstd_streams),
                      static_cast<unsigned long long>(stats.huffman_streams),
                      static_cast<unsigned long long>(stats.plain_zstd_frames));
      }
      j["rows"].push_back(row);
      std::printf("%-12s %-11s %-5s %7.1f  %-26s %7.4f %+7.2f%% %9.3f %9.3f %9s\n", s.name.c_str(),
                  s.kind.c_str(), s.dtype.c_str(), s.bytes.size() / 1048576.0,
                  codecs[c].name.c_str(), row["ratio"].get<double>(),
                  row["size_vs_zstd1"].get<double>() * 100, row["compress_gbps"].get<double>(),
                  row["decompress_gbps"].get<double>(), planes);
    }
    std::fflush(stdout);
  }
  j["transpose"] = TransposeSpeeds(std::max(reps, 3));
  for (const auto& t : j["transpose"]) {
    std::printf("transpose %d-byte elements: group %.2f GB/s, ungroup %.2f GB/s",
                t["elem_size"].get<int>(), t["group_gbps"].get<double>(),
                t["ungroup_gbps"].get<double>());
    if (t.contains("scalar_group_gbps"))
      std::printf(" (scalar loop: %.2f / %.2f)", t["scalar_group_gbps"].get<double>(),
                  t["scalar_ungroup_gbps"].get<double>());
    std::printf("\n");
  }
  WriteJson(json_out, j);
  return 0;
}
