// Micro-benchmarks of ackpt's internals (Google Benchmark): the per-byte
// costs the end-to-end drivers are made of.
//
//   ackpt_bench_micro [--benchmark_filter=RE] [--benchmark_out=FILE --benchmark_out_format=json]
#include <benchmark/benchmark.h>
#define XXH_INLINE_ALL
#include <ATen/ATen.h>
#include <xxhash.h>
#include <zstd.h>

#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "ackpt/ackpt.h"
#include "engine/snapshot.h"
#include "engine/task_pool.h"
#include "format/auto_policy.h"
#include "format/checksum.h"
#include "format/flatten.h"
#include "format/header.h"
#include "format/parallel.h"
#include "format/writer.h"

namespace {

using namespace ackpt;

// fp32 N(0, 0.02) bytes: what model weights look like to a compressor.
const std::vector<uint8_t>& Weights(size_t n) {
  static std::map<size_t, std::vector<uint8_t>> cache;
  auto it = cache.find(n);
  if (it != cache.end()) return it->second;
  at::manual_seed(0);
  at::Tensor t = at::randn({static_cast<int64_t>(n / 4)}) * 0.02;
  std::vector<uint8_t> v(n);
  std::memcpy(v.data(), t.data_ptr(), n);
  return cache.emplace(n, std::move(v)).first->second;
}

void BM_Xxh3(benchmark::State& state) {
  const auto& d = Weights(static_cast<size_t>(state.range(0)));
  for (auto _ : state) benchmark::DoNotOptimize(format::Xxh3(d.data(), d.size()));
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations()) * state.range(0));
}
BENCHMARK(BM_Xxh3)->Arg(64 << 10)->Arg(4 << 20)->Arg(64 << 20);

void BM_Xxh64(benchmark::State& state) {
  const auto& d = Weights(static_cast<size_t>(state.range(0)));
  for (auto _ : state) benchmark::DoNotOptimize(XXH64(d.data(), d.size(), 0));
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations()) * state.range(0));
}
BENCHMARK(BM_Xxh64)->Arg(4 << 20);

void BM_Memcpy(benchmark::State& state) {
  const auto& d = Weights(static_cast<size_t>(state.range(0)));
  std::vector<uint8_t> dst(d.size());
  for (auto _ : state) {
    std::memcpy(dst.data(), d.data(), d.size());
    benchmark::ClobberMemory();
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations()) * state.range(0));
}
BENCHMARK(BM_Memcpy)->Arg(4 << 20)->Arg(64 << 20);

// One 4 MiB frame at a zstd level, content checksum on (as ackpt writes it).
void BM_ZstdCompressFrame(benchmark::State& state) {
  const auto& d = Weights(size_t{4} << 20);
  ZSTD_CCtx* cctx = ZSTD_createCCtx();
  std::vector<uint8_t> out(ZSTD_compressBound(d.size()));
  size_t r = 0;
  for (auto _ : state) {
    ZSTD_CCtx_reset(cctx, ZSTD_reset_session_and_parameters);
    ZSTD_CCtx_setParameter(cctx, ZSTD_c_compressionLevel, static_cast<int>(state.range(0)));
    ZSTD_CCtx_setParameter(cctx, ZSTD_c_checksumFlag, 1);
    r = ZSTD_compress2(cctx, out.data(), out.size(), d.data(), d.size());
    benchmark::DoNotOptimize(r);
  }
  ZSTD_freeCCtx(cctx);
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations()) *
                          static_cast<int64_t>(d.size()));
  state.counters["ratio"] = double(d.size()) / double(r);
}
BENCHMARK(BM_ZstdCompressFrame)->Arg(-1)->Arg(1)->Arg(3)->Unit(benchmark::kMillisecond);

void BM_ZstdDecompressFrame(benchmark::State& state) {
  const auto& d = Weights(size_t{4} << 20);
  std::vector<uint8_t> comp(ZSTD_compressBound(d.size())), out(d.size());
  ZSTD_CCtx* cctx = ZSTD_createCCtx();
  ZSTD_CCtx_setParameter(cctx, ZSTD_c_compressionLevel, static_cast<int>(state.range(0)));
  ZSTD_CCtx_setParameter(cctx, ZSTD_c_checksumFlag, 1);
  const size_t n = ZSTD_compress2(cctx, comp.data(), comp.size(), d.data(), d.size());
  ZSTD_freeCCtx(cctx);
  ZSTD_DCtx* dctx = ZSTD_createDCtx();
  for (auto _ : state)
    benchmark::DoNotOptimize(ZSTD_decompressDCtx(dctx, out.data(), out.size(), comp.data(), n));
  ZSTD_freeDCtx(dctx);
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations()) *
                          static_cast<int64_t>(d.size()));
}
BENCHMARK(BM_ZstdDecompressFrame)->Arg(1)->Arg(3)->Unit(benchmark::kMillisecond);

// An Env whose files discard their bytes: the encode path without the disk.
class NullFile final : public WritableFile {
 public:
  explicit NullFile(std::string p) : path_(std::move(p)) {}
  void Append(const void*, size_t) override {}
  void Sync() override {}
  void Close() override {}
  const std::string& path() const override { return path_; }

 private:
  std::string path_;
};
class NullEnv final : public EnvWrapper {
 public:
  NullEnv() : EnvWrapper(Env::Default()) {}
  std::unique_ptr<WritableFile> NewWritableFile(const std::string& p) override {
    return std::make_unique<NullFile>(p);
  }
  void RenameFile(const std::string&, const std::string&) override {}
  void RemoveFile(const std::string&) override {}
  void SyncDir(const std::string&) override {}
};

// The one encode path (hash, header, compress, commit) on 64 MiB, no disk:
// args (level, threads).
void BM_EncodeAndCommitNoDisk(benchmark::State& state) {
  const auto& d = Weights(size_t{64} << 20);
  format::FlatTensor t;
  t.name = "w";
  t.dtype = at::kByte;
  t.shape = {static_cast<int64_t>(d.size())};
  t.nbytes = d.size();
  t.data = d.data();
  WriteOptions o;
  o.zstd_level = static_cast<int>(state.range(0));
  o.writer_threads = static_cast<int>(state.range(1));
  NullEnv env;
  // As in the engine: the calling thread takes part, so threads - 1 helpers.
  std::unique_ptr<engine::TaskPool> pool;
  if (o.writer_threads > 1) pool = std::make_unique<engine::TaskPool>(o.writer_threads - 1);
  format::ParallelForFn pf = [&pool](size_t n, const std::function<void(size_t)>& fn) {
    if (pool) {
      pool->ParallelFor(n, fn);
    } else {
      for (size_t i = 0; i < n; ++i) fn(i);
    }
  };
  for (auto _ : state) {
    std::vector<format::FlatTensor> tensors{t};
    WriteResult r = format::EncodeAndCommit(&tensors, R"({"d":[["w",{"T":"w"}]]})", o, {},
                                            "/tmp/ackpt-micro-null", &env, pf,
                                            &format::codec::DefaultAutoModel());
    benchmark::DoNotOptimize(r.file_bytes);
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations()) *
                          static_cast<int64_t>(d.size()));
}
BENCHMARK(BM_EncodeAndCommitNoDisk)
    ->Args({1, 1})
    ->Args({1, 2})
    ->Args({3, 2})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();

std::vector<format::FlatTensor> HeaderTensors(size_t n, std::vector<at::Tensor>* keep) {
  std::vector<format::FlatTensor> v;
  for (size_t i = 0; i < n; ++i) {
    at::Tensor t = at::zeros({16, 4});
    keep->push_back(t);
    format::FlatTensor s;
    s.name =
        "model/layers." + std::to_string(i / 12) + ".mlp.fc" + std::to_string(i % 12) + ".weight";
    s.dtype = at::kFloat;
    s.shape = {16, 4};
    s.data = t.data_ptr();
    s.nbytes = t.nbytes();
    s.xxh3 = format::Xxh3(s.data, s.nbytes);
    v.push_back(std::move(s));
  }
  return v;
}

void BM_EncodeHeader(benchmark::State& state) {
  std::vector<at::Tensor> keep;
  auto tensors = HeaderTensors(static_cast<size_t>(state.range(0)), &keep);
  for (auto _ : state) benchmark::DoNotOptimize(format::EncodeHeader(tensors, "{}", {}));
  state.SetItemsProcessed(static_cast<int64_t>(state.iterations()) * state.range(0));
}
BENCHMARK(BM_EncodeHeader)->Arg(300)->Arg(3000)->Unit(benchmark::kMicrosecond);

void BM_DecodeHeader(benchmark::State& state) {
  std::vector<at::Tensor> keep;
  auto tensors = HeaderTensors(static_cast<size_t>(state.range(0)), &keep);
  // A tree that references every tensor, as ackpt writes it.
  StateDict sd;
  for (size_t i = 0; i < tensors.size(); ++i) sd.set("t" + std::to_string(i), keep[i]);
  std::vector<format::FlatTensor> flat;
  std::string tree;
  format::Flatten(sd, &flat, &tree);
  for (size_t i = 0; i < tensors.size(); ++i) tensors[i].name = flat[i].name;
  const std::string header = format::EncodeHeader(tensors, tree, {});
  uint64_t data = 0;
  for (const auto& t : tensors) data += t.nbytes;
  for (auto _ : state) {
    FileInfo info;
    format::DecodeHeader(header, data, "bench", &info);
    benchmark::DoNotOptimize(info.tensors.size());
  }
  state.SetItemsProcessed(static_cast<int64_t>(state.iterations()) * state.range(0));
}
BENCHMARK(BM_DecodeHeader)->Arg(300)->Arg(3000)->Unit(benchmark::kMicrosecond);

void BM_Flatten(benchmark::State& state) {
  StateDict sd;
  for (int64_t i = 0; i < state.range(0); ++i) {
    sd.set("p" + std::to_string(i), StateDict{{"exp_avg", at::zeros({4})}, {"step", int64_t{1}}});
  }
  for (auto _ : state) {
    std::vector<format::FlatTensor> flat;
    std::string tree;
    format::Flatten(sd, &flat, &tree);
    benchmark::DoNotOptimize(tree.size());
  }
  state.SetItemsProcessed(static_cast<int64_t>(state.iterations()) * state.range(0));
}
BENCHMARK(BM_Flatten)->Arg(300)->Unit(benchmark::kMicrosecond);

// The snapshot copy save() does: 64 MiB in 16 tensors into a pre-faulted
// buffer; arg = copy threads (1: caller only).
void BM_SnapshotCopy(benchmark::State& state) {
  std::vector<format::FlatTensor> flat;
  for (int i = 0; i < 16; ++i) flat.push_back({"t" + std::to_string(i), at::randn({1 << 20})});
  bool cuda = false;
  const uint64_t bytes = engine::PlanSnapshot(&flat, &cuda);
  engine::StagingOptions so;
  so.budget = 2 * bytes;
  engine::StagingPool staging(so);  // 4 MiB chunks, reused across iterations
  std::unique_ptr<engine::TaskPool> pool;
  if (state.range(0) > 1)
    pool = std::make_unique<engine::TaskPool>(static_cast<int>(state.range(0)) - 1);
  for (auto _ : state) {
    std::vector<format::FlatTensor> planned = flat;  // CopySnapshot drops the tensor refs
    engine::SnapshotStream stream(&staging, bytes, false);
    stream.TryTakeAll();
    engine::CopySnapshot(&planned, &stream, pool.get(), nullptr, 0);
    benchmark::ClobberMemory();
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations()) * static_cast<int64_t>(bytes));
}
BENCHMARK(BM_SnapshotCopy)->Arg(1)->Arg(2)->Unit(benchmark::kMillisecond)->UseRealTime();

}  // namespace

BENCHMARK_MAIN();
