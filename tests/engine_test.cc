// White-box tests of the engine's building blocks: staging pool, task pool, snapshot copy.
#include "engine/engine.h"

#include <ATen/ATen.h>
#include <sched.h>
#include <spdlog/sinks/null_sink.h>
#include <spdlog/spdlog.h>
#include <sys/resource.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <fstream>
#include <future>
#include <map>
#include <mutex>
#include <sstream>
#include <thread>

#include "ackpt/error.h"
#include "ackpt/format.h"
#include "engine/snapshot.h"
#include "engine/staging_pool.h"
#include "engine/task_pool.h"
#include "format/auto_policy.h"
#include "format/checksum.h"
#include "format/writer.h"
#include "test_util.h"

namespace ackpt {
namespace engine {
namespace {

using testing::PatternTensor;
using testing::TempDir;

StagingOptions PoolOptions(uint64_t budget, uint64_t chunk, bool pin = false) {
  StagingOptions o;
  o.budget = budget;
  o.chunk_bytes = chunk;
  o.pin = pin;
  return o;
}

TEST(StagingPoolTest, SteadyStateReusesChunksWithoutAllocating) {
  StagingPool pool(PoolOptions(/*budget=*/64 << 20, /*chunk=*/1 << 20, /*pin=*/true));
  for (int i = 0; i < 100; ++i) {
    std::vector<StagingChunk*> chunks;
    ASSERT_TRUE(pool.TryAcquire(5, false, &chunks));
    for (StagingChunk* c : chunks) {
      EXPECT_EQ(reinterpret_cast<uintptr_t>(c->data) % 4096, 0u);  // page-aligned
      std::memset(c->data, i, 1 << 20);
      pool.Release(c);
    }
  }
  EXPECT_EQ(pool.allocations(), 5u);
  EXPECT_EQ(pool.chunks_in_use(), 0u);
  EXPECT_EQ(pool.chunks_in_use_peak(), 5u);
  EXPECT_EQ(pool.reserved(), 5u << 20);
  EXPECT_LE(pool.peak(), 64u << 20);
}

TEST(StagingPoolTest, BudgetBoundsChunksAllOrNothingAndAcquireWaits) {
  StagingPool pool(PoolOptions(/*budget=*/8 << 20, /*chunk=*/1 << 20));
  EXPECT_EQ(pool.budget_chunks(), 8u);
  std::vector<StagingChunk*> six;
  ASSERT_TRUE(pool.TryAcquire(6, false, &six));
  std::vector<StagingChunk*> three;
  EXPECT_FALSE(pool.TryAcquire(3, false, &three));  // all or nothing
  EXPECT_TRUE(three.empty());
  EXPECT_EQ(pool.chunks_in_use(), 6u);
  StagingChunk* a = pool.Acquire(false, /*wait=*/false);
  StagingChunk* b = pool.Acquire(false, /*wait=*/false);
  ASSERT_NE(a, nullptr);
  ASSERT_NE(b, nullptr);
  EXPECT_EQ(pool.Acquire(false, /*wait=*/false), nullptr);
  bool waited = false;
  auto waiter = std::async(std::launch::async, [&] { return pool.Acquire(false, true, &waited); });
  EXPECT_EQ(waiter.wait_for(std::chrono::milliseconds(100)), std::future_status::timeout);
  pool.Release(a);
  EXPECT_EQ(waiter.get(), a);
  EXPECT_TRUE(waited);
  EXPECT_EQ(pool.chunk_waits(), 1u);
  EXPECT_EQ(pool.peak(), 8u << 20);
  pool.Release(a);
  pool.Release(b);
  for (StagingChunk* c : six) pool.Release(c);
}

TEST(StagingPoolTest, AutomaticBudgetIsTwiceTheStateCappedAtAQuarterOfMemory) {
  StagingOptions o = PoolOptions(/*budget=*/0, /*chunk=*/1 << 20);
  o.memory_bytes = uint64_t{64} << 20;
  StagingPool pool(o);
  EXPECT_EQ(pool.budget(), StagingPool::kMinAutoChunks << 20);
  pool.NoteStateBytes(uint64_t{5} << 20);
  EXPECT_EQ(pool.budget(), 10u << 20);
  pool.NoteStateBytes((uint64_t{5} << 20) + 1);  // rounds up to whole chunks
  EXPECT_EQ(pool.budget(), 12u << 20);
  pool.NoteStateBytes(uint64_t{40} << 20);  // a quarter of the 64 MiB of memory
  EXPECT_EQ(pool.budget(), 16u << 20);
  pool.NoteStateBytes(1);  // never shrinks
  EXPECT_EQ(pool.budget(), 16u << 20);
}

TEST(StagingPoolTest, PageLockingStopsAtTheMemlockLimitWithOneWarning) {
  StagingPool::ResetMemlockWarningForTesting();
  std::vector<std::string> warnings;
  StagingOptions o = PoolOptions(/*budget=*/8 << 20, /*chunk=*/1 << 20, /*pin=*/true);
  o.memlock_limit = uint64_t{2} << 20;
  o.warn = [&](const std::string& w) { warnings.push_back(w); };
  StagingPool pool(o);
  std::vector<StagingChunk*> chunks;
  ASSERT_TRUE(pool.TryAcquire(5, false, &chunks));
  EXPECT_EQ(pool.locked_bytes(), 2u << 20);
  int locked = 0;
  for (StagingChunk* c : chunks) locked += c->locked;
  EXPECT_EQ(locked, 2);
  ASSERT_EQ(warnings.size(), 1u);
  EXPECT_NE(warnings[0].find("RLIMIT_MEMLOCK"), std::string::npos) << warnings[0];
  // The exact fix: how much, and how to raise it.
  EXPECT_NE(warnings[0].find("ulimit -l 8192"), std::string::npos) << warnings[0];
  EXPECT_NE(warnings[0].find("pin_host_memory = false"), std::string::npos) << warnings[0];
  for (StagingChunk* c : chunks) pool.Release(c);
  // Once per process, not once per pool (per checkpointer, per rank).
  StagingPool second(o);
  std::vector<StagingChunk*> more;
  ASSERT_TRUE(second.TryAcquire(5, false, &more));
  EXPECT_EQ(second.locked_bytes(), 2u << 20);
  EXPECT_EQ(warnings.size(), 1u);
  for (StagingChunk* c : more) second.Release(c);
}

TEST(StagingPoolTest, ChunkSizeIsAFrameOrAnEighthOfASmallBudget) {
  EXPECT_EQ(StagingChunkBytes(4 << 20, 0), 4u << 20);
  EXPECT_EQ(StagingChunkBytes(4 << 20, uint64_t{1} << 30), 4u << 20);
  EXPECT_EQ(StagingChunkBytes(4 << 20, 4 << 20), 512u << 10);  // 8 chunks in the budget
  EXPECT_EQ(StagingChunkBytes(1 << 30, 0), 64u << 20);         // capped
  EXPECT_EQ(StagingChunkBytes(100000, 0), 64u << 10);          // not a multiple of 64
  EXPECT_EQ(StagingChunkBytes(64 << 10, 200 << 10), 64u << 10);
  EXPECT_THROW(StagingChunkBytes(64 << 10, 100 << 10), Error);
}

TEST(TaskPoolTest, ParallelForRunsEachIndexOnceAndNestsWithoutDeadlock) {
  TaskPool pool(2);
  std::vector<std::atomic<int>> hits(1000);
  pool.ParallelFor(hits.size(), [&](size_t i) { hits[i]++; });
  for (auto& h : hits) EXPECT_EQ(h.load(), 1);
  // Every pool thread runs a task that itself calls ParallelFor on the same pool.
  std::atomic<int> inner{0};
  pool.ParallelFor(4, [&](size_t) { pool.ParallelFor(50, [&](size_t) { inner++; }); });
  EXPECT_EQ(inner.load(), 200);
}

TEST(TaskPoolTest, FirstExceptionIsRethrownAfterAllWorkStops) {
  TaskPool pool(2);
  std::atomic<int> ran{0};
  EXPECT_THROW(pool.ParallelFor(100,
                                [&](size_t i) {
                                  ran++;
                                  if (i == 3) throw Error::InvalidArgument("boom");
                                }),
               Error);
  EXPECT_LE(ran.load(), 100);
}

// The bytes of tensor `t` of a published stream.
std::string StagedBytes(SnapshotStream& stream, const format::FlatTensor& t) {
  std::string out;
  stream.Visit(t.staging_offset, t.nbytes,
               [&](const void* p, size_t n) { out.append(static_cast<const char*>(p), n); });
  return out;
}

std::string ContiguousBytes(const at::Tensor& t) {
  at::Tensor c = t.resolve_neg().resolve_conj().contiguous();
  return std::string(static_cast<const char*>(c.data_ptr()), c.nbytes());
}

std::vector<format::FlatTensor> MixedTensors() {
  std::vector<format::FlatTensor> flat;
  flat.push_back({"big", PatternTensor({3000, 1000}, at::kFloat, 1)});  // many chunks
  flat.push_back({"t", PatternTensor({640, 48}, at::kDouble, 2).t()});  // strided, spans chunks
  flat.push_back({"step", PatternTensor({1000, 100}, at::kBFloat16, 3).slice(0, 0, 1000, 3)});
  flat.push_back({"empty", at::empty({0, 5})});
  flat.push_back({"scalar", at::scalar_tensor(7, at::kLong)});
  flat.push_back({"neg_view", at::_neg_view(PatternTensor({10}, at::kFloat, 4))});
  flat.push_back({"odd", PatternTensor({33333}, at::kByte, 5)});  // ends mid-chunk
  return flat;
}

TEST(SnapshotTest, CopiesContiguousStridedAndEmptyTensorsExactlyAcrossChunks) {
  std::vector<format::FlatTensor> flat = MixedTensors();
  std::map<std::string, std::string> expected;
  for (const auto& f : flat) expected[f.name] = ContiguousBytes(f.tensor);
  bool any_device = true;
  const uint64_t bytes = PlanSnapshot(&flat, &any_device);
  EXPECT_FALSE(any_device);
  // File order: largest elements first, packed.
  EXPECT_EQ(flat.front().dtype, at::kDouble);
  uint64_t offset = 0;
  for (const auto& f : flat) {
    EXPECT_EQ(f.staging_offset, offset) << f.name;
    offset += f.nbytes;
  }
  EXPECT_EQ(bytes, offset);
  // 64 KiB chunks: every tensor but the smallest spans several.
  StagingPool pool(PoolOptions(/*budget=*/uint64_t{64} << 20, /*chunk=*/64 << 10));
  SnapshotStream stream(&pool, bytes, false);
  ASSERT_TRUE(stream.TryTakeAll());
  const SnapshotPoint point = RecordSnapshotPoint(flat);
  TaskPool threads(1);
  CopySnapshot(&flat, &stream, &threads, &point, 0);
  EXPECT_EQ(stream.WaitFor(bytes), bytes);
  for (const auto& f : flat) {
    // The snapshot holds no reference to the caller's tensor; its bytes are staged.
    EXPECT_FALSE(f.tensor.defined()) << f.name;
    EXPECT_EQ(StagedBytes(stream, f), expected[f.name]) << f.name;
  }
  // Hashing from staging (the writer) and from the sources (a streaming save) agree.
  std::vector<format::FlatTensor> sources = MixedTensors();
  PlanSnapshot(&sources, &any_device);
  std::vector<uint8_t> bounce(64 << 10);
  HashSources(&sources, bounce.data(), bounce.size(), &threads);
  format::HashTensors(&flat, &stream, [](size_t n, const std::function<void(size_t)>& fn) {
    for (size_t i = 0; i < n; ++i) fn(i);
  });
  for (size_t i = 0; i < flat.size(); ++i) {
    EXPECT_EQ(flat[i].xxh3, sources[i].xxh3) << flat[i].name;
    EXPECT_EQ(flat[i].xxh3, format::Xxh3(expected[flat[i].name].data(), flat[i].nbytes));
  }
}

TEST(SnapshotTest, RingOfFourChunksCarriesAStateTenTimesItsSize) {
  // A writer thread drains the stream while the copy fills it.
  std::vector<format::FlatTensor> flat;
  flat.push_back({"a", PatternTensor({256 * 1024}, at::kFloat, 1)});     // 1 MiB
  flat.push_back({"b", PatternTensor({700, 300}, at::kDouble, 2).t()});  // strided
  flat.push_back({"c", PatternTensor({50000}, at::kShort, 3)});
  std::map<std::string, std::string> expected;
  for (const auto& f : flat) expected[f.name] = ContiguousBytes(f.tensor);
  bool any_device;
  const uint64_t bytes = PlanSnapshot(&flat, &any_device);
  StagingPool pool(PoolOptions(/*budget=*/4 * (64 << 10), /*chunk=*/64 << 10));
  ASSERT_GE(bytes, 10u * pool.budget());
  SnapshotStream stream(&pool, bytes, false);
  EXPECT_FALSE(stream.TryTakeAll());
  std::string drained;
  auto writer = std::async(std::launch::async, [&] {
    uint64_t at = 0;
    while (at < bytes) {
      const uint64_t avail = stream.WaitFor(at + 1);
      stream.Visit(at, avail - at, [&](const void* p, size_t n) {
        drained.append(static_cast<const char*>(p), n);
      });
      at = avail;
      stream.Release(at);
    }
  });
  TaskPool threads(1);
  CopySnapshot(&flat, &stream, &threads, nullptr, 2);
  writer.get();
  ASSERT_EQ(drained.size(), bytes);
  for (const auto& f : flat)
    EXPECT_EQ(drained.substr(f.staging_offset, f.nbytes), expected[f.name]) << f.name;
  EXPECT_LE(pool.chunks_in_use_peak(), 4u);
  EXPECT_LE(pool.peak(), pool.budget());
  EXPECT_GT(stream.chunk_waits(), 0u);
  EXPECT_GT(stream.streamed_bytes(), 0u);
  EXPECT_EQ(pool.chunks_in_use(), 0u);  // released as written
}

TEST(SnapshotTest, AWriterThatGivesUpStopsTheCopy) {
  std::vector<format::FlatTensor> flat{{"a", PatternTensor({1 << 20}, at::kFloat, 1)}};
  bool any_device;
  const uint64_t bytes = PlanSnapshot(&flat, &any_device);
  StagingPool pool(PoolOptions(/*budget=*/4 * (64 << 10), /*chunk=*/64 << 10));
  SnapshotStream stream(&pool, bytes, false);
  auto writer = std::async(std::launch::async, [&] {
    stream.WaitFor(1);
    stream.Abort(std::make_exception_ptr(Error::InvalidArgument("disk full")));
  });
  EXPECT_THROW(CopySnapshot(&flat, &stream, nullptr, nullptr, 1), Error);
  writer.get();
  EXPECT_FALSE(flat[0].tensor.defined());
}

TEST(SnapshotTest, RejectsUnsupportedTensorsNamingThem) {
  std::vector<format::FlatTensor> flat{{"model/c", at::zeros({2}, at::kComplexFloat)}};
  bool any_device;
  try {
    PlanSnapshot(&flat, &any_device);
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), Error::Code::kUnsupported);
    EXPECT_NE(std::string(e.what()).find("model/c"), std::string::npos);
  }
  flat = {{"sparse", at::eye(3).to_sparse()}};
  EXPECT_THROW(PlanSnapshot(&flat, &any_device), Error);
}

// ---- The engine: overlapped snapshot, fence, torn snapshots, thread priority.

std::shared_ptr<spdlog::logger> QuietLogger() {
  return std::make_shared<spdlog::logger>("engine-test",
                                          std::make_shared<spdlog::sinks::null_sink_mt>());
}

EngineOptions Options(bool overlap, Compression compression = Compression::kZstd) {
  EngineOptions o;
  o.compression = compression;
  o.chunk_size = 64 << 10;
  o.writer_threads = 2;
  o.snapshot_threads = 2;
  o.overlap_snapshot = overlap;
  o.logger = QuietLogger();
  return o;
}

// A state of a few MiB: a large matrix (parallel copy), small and strided tensors.
StateDict ModelState(int seed) {
  StateDict model;
  model.set("w", PatternTensor({1024, 1024}, at::kFloat, seed));
  model.set("b", PatternTensor({1024}, at::kFloat, seed + 1));
  model.set("t", PatternTensor({300, 200}, at::kDouble, seed + 2).t());
  return StateDict{{"model", model}, {"step", int64_t{seed}}};
}

at::Tensor Weight(const StateDict& s) { return s.at("model").dict().at("w").tensor(); }

// Lets a test hold the copying thread inside the overlap window.
class CopyGate {
 public:
  void Enter() {
    std::unique_lock<std::mutex> lock(mu_);
    entered_ = true;
    cv_.notify_all();
    cv_.wait(lock, [&] { return open_; });
  }
  void WaitEntered() {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait(lock, [&] { return entered_; });
  }
  void Open() {
    std::lock_guard<std::mutex> lock(mu_);
    open_ = true;
    cv_.notify_all();
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  bool entered_ = false;
  bool open_ = false;
};

void ExpectFileHolds(const std::string& path, const StateDict& expected) {
  std::string why;
  EXPECT_TRUE(ExactlyEqual(ReadStateDict(path), expected, &why)) << path << ": " << why;
}

TEST(EngineOverlapTest, SaveReturnsBeforeTheCopyAndTheFenceWaitsForIt) {
  TempDir dir;
  CopyGate gate;
  std::atomic<int> overlapped{0};
  EngineOptions o = Options(/*overlap=*/true);
  EngineTestHooks hooks;
  hooks.before_copy = [&](int64_t) { gate.Enter(); };
  o.on_save = [&](const SaveStats& s) { overlapped += s.overlapped && s.ok; };
  Engine e(o, "EngineOptions", hooks);
  StateDict st = ModelState(1);
  ASSERT_TRUE(e.Save(st, 1, dir.file("1.st"), false, {}));
  gate.WaitEntered();  // save() has returned; the copy has not started
  auto fence = std::async(std::launch::async, [&] { e.WaitSnapshot(); });
  EXPECT_EQ(fence.wait_for(std::chrono::milliseconds(100)), std::future_status::timeout);
  gate.Open();
  fence.get();
  // Past the fence the caller owns its tensors again; the file keeps the values at save().
  Weight(st).add_(1);
  e.Wait();
  ExpectFileHolds(dir.file("1.st"), ModelState(1));
  EXPECT_EQ(overlapped.load(), 1);
}

TEST(EngineOverlapTest, ModifyingATensorBeforeTheFenceFailsThatSaveNamingTheTensor) {
  TempDir dir;
  CopyGate gate;
  EngineOptions o = Options(/*overlap=*/true);
  EngineTestHooks hooks;
  hooks.before_copy = [&](int64_t index) {
    if (index == 1) gate.Enter();
  };
  Engine e(o, "EngineOptions", hooks);
  StateDict st = ModelState(1);
  ASSERT_TRUE(e.Save(st, 1, dir.file("1.st"), false, {}));
  gate.WaitEntered();
  Weight(st).mul_(2);  // an optimizer step without the fence
  gate.Open();
  try {
    e.Wait();
    FAIL() << "a torn snapshot was written";
  } catch (const Error& err) {
    EXPECT_EQ(err.code(), Error::Code::kInvalidArgument);
    const std::string what = err.what();
    EXPECT_NE(what.find("'model/w'"), std::string::npos) << what;
    EXPECT_NE(what.find("index 1"), std::string::npos) << what;
    EXPECT_NE(what.find("wait_snapshot()"), std::string::npos) << what;
  }
  EXPECT_FALSE(Env::Default()->FileExists(dir.file("1.st")));
  EXPECT_EQ(e.counters().saves_torn, 1u);
  EXPECT_EQ(e.counters().saves_failed, 1u);
  // Reported once; the next save goes through.
  ASSERT_TRUE(e.Save(st, 2, dir.file("2.st"), false, {}));
  e.WaitSnapshot();
  e.Wait();
  StateDict expected = ModelState(1);
  Weight(expected).mul_(2);
  ExpectFileHolds(dir.file("2.st"), expected);
}

TEST(EngineOverlapTest, FencedTrainingLoopWritesTheStateOfEverySave) {
  for (Compression c : {Compression::kZstd, Compression::kNone}) {
    TempDir dir;
    Engine e(Options(/*overlap=*/true, c));
    StateDict st = ModelState(0);
    std::vector<StateDict> expected;
    for (int step = 0; step < 5; ++step) {
      ASSERT_TRUE(e.Save(st, step, dir.file(std::to_string(step)), false, {}));
      expected.push_back(ModelState(0));
      Weight(expected.back()).add_(step);
      // "forward/backward" reads the parameters while the copy runs.
      volatile float sum = Weight(st).sum().item<float>();
      (void)sum;
      e.WaitSnapshot();
      Weight(st).add_(1);  // the optimizer step, after the fence
    }
    e.Wait();
    for (int step = 0; step < 5; ++step)
      ExpectFileHolds(dir.file(std::to_string(step)), expected[step]);
    EXPECT_EQ(e.counters().saves_torn, 0u);
  }
}

TEST(EngineOverlapTest, ASaveWaitsForThePreviousCopyAndForcedSavesAreDurableOnReturn) {
  TempDir dir;
  CopyGate gate;
  EngineOptions o = Options(/*overlap=*/true);
  EngineTestHooks hooks;
  hooks.before_copy = [&](int64_t index) {
    if (index == 1) gate.Enter();
  };
  Engine e(o, "EngineOptions", hooks);
  StateDict st = ModelState(3);
  ASSERT_TRUE(e.Save(st, 1, dir.file("1.st"), false, {}));
  gate.WaitEntered();
  // One snapshot copy at a time: the next save waits for this one.
  auto second =
      std::async(std::launch::async, [&] { return e.Save(st, 2, dir.file("2.st"), true, {}); });
  EXPECT_EQ(second.wait_for(std::chrono::milliseconds(100)), std::future_status::timeout);
  gate.Open();
  EXPECT_TRUE(second.get());
  // Forced: copied inside save() and durable when it returns.
  EXPECT_TRUE(Env::Default()->FileExists(dir.file("2.st")));
  e.Wait();
  ExpectFileHolds(dir.file("1.st"), ModelState(3));
  ExpectFileHolds(dir.file("2.st"), ModelState(3));
}

TEST(EngineOverlapTest, WithoutOverlapTheFenceReturnsAtOnce) {
  TempDir dir;
  std::atomic<int> overlapped{0};
  EngineOptions o = Options(/*overlap=*/false);
  o.on_save = [&](const SaveStats& s) { overlapped += s.overlapped; };
  Engine e(o);
  StateDict st = ModelState(4);
  ASSERT_TRUE(e.Save(st, 1, dir.file("1.st"), false, {}));
  e.WaitSnapshot();
  Weight(st).add_(1);  // save() returned: the snapshot is complete and private
  e.Wait();
  ExpectFileHolds(dir.file("1.st"), ModelState(4));
  EXPECT_EQ(overlapped.load(), 0);
}

// Fields of /proc/self/task/TID/stat after the "(comm)" field: index 0 is
// field 3 (state), so field N is at N - 3.
std::vector<std::string> TaskStat(int tid) {
  std::ifstream in("/proc/self/task/" + std::to_string(tid) + "/stat");
  std::string line;
  std::getline(in, line);
  std::istringstream rest(line.substr(line.rfind(')') + 2));
  std::vector<std::string> fields;
  for (std::string f; rest >> f;) fields.push_back(f);
  return fields;
}

std::string TaskComm(int tid) {
  std::ifstream in("/proc/self/task/" + std::to_string(tid) + "/comm");
  std::string name;
  std::getline(in, name);
  return name;
}

TEST(EnginePriorityTest, PriorityIsAppliedToEveryWriterAndCopyThread) {
  // New threads inherit the caller's nice value (the test may run under nice).
  errno = 0;
  const int base = ::getpriority(PRIO_PROCESS, 0);
  ASSERT_EQ(errno, 0);
  struct Case {
    WriterPriority priority;
    int nice;
    int policy;
  };
  for (const Case& c : {Case{WriterPriority::kNormal, base, SCHED_OTHER},
                        Case{WriterPriority::kLow, 19, SCHED_OTHER},
                        Case{WriterPriority::kIdle, base, SCHED_IDLE}}) {
    EngineOptions o = Options(/*overlap=*/true);
    o.writer_priority = c.priority;
    Engine e(o);
    const std::vector<int> writers = e.writer_thread_ids();
    const std::vector<int> copiers = e.copy_thread_ids();
    EXPECT_EQ(writers.size(), 2u);
    EXPECT_EQ(copiers.size(), 1u);  // overlapped: snapshot_threads - 1, at least one
    std::vector<std::pair<int, std::string>> threads;
    for (int t : writers) threads.emplace_back(t, "ackpt-writer");
    for (int t : copiers) threads.emplace_back(t, "ackpt-copy");
    for (const auto& [tid, name] : threads) {
      SCOPED_TRACE("thread " + std::to_string(tid) + " priority " +
                   std::to_string(static_cast<int>(c.priority)));
      EXPECT_NE(tid, static_cast<int>(::getpid()));
      EXPECT_EQ(TaskComm(tid), name);
      errno = 0;
      EXPECT_EQ(::getpriority(PRIO_PROCESS, static_cast<id_t>(tid)), c.nice);
      EXPECT_EQ(::sched_getscheduler(tid), c.policy);
      const auto stat = TaskStat(tid);
      ASSERT_GE(stat.size(), 39u);
      EXPECT_EQ(std::stoi(stat[19 - 3]), c.nice);    // field 19: nice
      EXPECT_EQ(std::stoi(stat[41 - 3]), c.policy);  // field 41: policy
    }
    // The caller's own thread is never changed.
    EXPECT_EQ(::sched_getscheduler(0), SCHED_OTHER);
    EXPECT_EQ(::getpriority(PRIO_PROCESS, 0), base);
  }
}

// The copy hashes what it copies, while it is in cache: every tensor's
// checksum is right whichever thread copied which part, and only the parts
// it could not hash in order (after a split between copy threads, strided
// tensors) are left to the writer.
TEST(EngineCopyHashTest, ChecksumsComeFromTheCopyAndAreExact) {
  TempDir dir;
  StateDict st;
  st.set("big", at::randn({6 << 20}));  // 24 MiB: split between the copy threads
  for (int i = 0; i < 40; ++i) st.set("small" + std::to_string(i), at::randn({1000 + i}));
  st.set("strided", at::randn({300, 200}).t());
  st.set("empty", at::zeros({0}));
  for (Compression c : {Compression::kNone, Compression::kZstd}) {
    SCOPED_TRACE(static_cast<int>(c));
    EngineOptions o = Options(/*overlap=*/false, c);
    o.chunk_size = 1 << 20;
    o.fsync = false;
    std::vector<SaveStats> stats;
    o.on_save = [&](const SaveStats& s) { stats.push_back(s); };
    Engine e(o);
    const std::string path = dir.file("copy_hash_" + std::to_string(static_cast<int>(c)));
    ASSERT_TRUE(e.Save(st, 1, path, /*force=*/true, {}));
    ASSERT_EQ(stats.size(), 1u);
    ASSERT_TRUE(stats[0].ok) << stats[0].error;
    // The strided tensor is the writer's; of the big one, at most the part
    // past the split; the small ones were hashed in the copy.
    const uint64_t strided = 300 * 200 * 4;
    EXPECT_GE(stats[0].late_hash_bytes, strided);
    EXPECT_LE(stats[0].late_hash_bytes, strided + (uint64_t{6} << 20) * 4);
    EXPECT_LT(stats[0].late_hash_bytes, stats[0].bytes / 2 + strided);
    ExpectFileHolds(path, st);  // verifies every tensor's checksum
    auto r = CheckpointReader::Open(path);
    r->Verify();
  }
}

// The checksums are taken from the bytes as copied, so a byte that changes
// in staging afterwards (a stray write, bad memory) is caught on load rather
// than hashed and saved as if it were the state.
TEST(EngineCopyHashTest, AByteFlippedInStagingAfterTheCopyIsCaughtOnLoad) {
  TempDir dir;
  StateDict st;
  st.set("a", at::randn({100000}));
  st.set("b", at::randn({100000}));
  for (Compression c : {Compression::kNone, Compression::kZstd}) {
    SCOPED_TRACE(static_cast<int>(c));
    EngineOptions o = Options(/*overlap=*/false, c);
    o.fsync = false;
    EngineTestHooks hooks;
    hooks.after_copy = [](int64_t, SnapshotStream* staged) {
      *staged->MutableByteForTesting(400000 + 1234) ^= 0x10;  // inside "b" (file order a, b)
    };
    Engine e(o, "EngineOptions", hooks);
    const std::string path = dir.file("flip_" + std::to_string(static_cast<int>(c)));
    ASSERT_TRUE(e.Save(st, 1, path, /*force=*/true, {}));
    const Error err = testing::CatchError([&] { ReadStateDict(path); });
    EXPECT_EQ(err.code(), Error::Code::kCorruption) << err.what();
    EXPECT_TRUE(testing::Contains(err.what(), "'b'")) << err.what();
    EXPECT_TRUE(testing::Contains(err.what(), path)) << err.what();
  }
}

// kAuto's model belongs to its engine: two engines (checkpointers writing
// to different disks) each decide from their own disk speed, and neither
// touches the synchronous writer's process-wide model.
TEST(EngineAutoTest, EachEngineDecidesFromItsOwnModel) {
  TempDir dir;
  StateDict st;
  st.set("w", at::randn({300000}).mul(0.02));
  st.set("z", at::zeros({200000}));
  st.set("h", at::randn({100000}).to(at::kBFloat16));
  EngineOptions o = Options(/*overlap=*/false, Compression::kAuto);
  o.chunk_size = 256 << 10;
  o.fsync = false;
  Engine fast_disk(o), slow_disk(o);
  fast_disk.auto_model().SetDiskSpeedForTesting(1e12);  // faster than any codec: store
  // Slow enough that compressing wins even when the codec itself runs
  // slowly (ThreadSanitizer, a loaded CI machine): at 100 KB/s a frame that
  // shrinks by 5 % is worth compressing at anything over 2 MB/s.
  slow_disk.auto_model().SetDiskSpeedForTesting(100e3);
  format::codec::AutoChoice untouched = format::codec::AutoChoice::kZstd;
  const double before =
      format::codec::DefaultAutoModel().LastEstimateForTesting(&untouched).disk_bytes_per_s;
  ASSERT_TRUE(fast_disk.Save(st, 1, dir.file("fast.st"), /*force=*/true, {}));
  ASSERT_TRUE(slow_disk.Save(st, 1, dir.file("slow.st"), /*force=*/true, {}));
  format::codec::AutoChoice fast_choice, slow_choice;
  EXPECT_EQ(fast_disk.auto_model().LastEstimateForTesting(&fast_choice).disk_bytes_per_s, 1e12);
  EXPECT_EQ(slow_disk.auto_model().LastEstimateForTesting(&slow_choice).disk_bytes_per_s, 100e3);
  EXPECT_EQ(fast_choice, format::codec::AutoChoice::kStore);
  EXPECT_NE(slow_choice, format::codec::AutoChoice::kStore);
  auto fast = CheckpointReader::Open(dir.file("fast.st"));
  auto slow = CheckpointReader::Open(dir.file("slow.st"));
  EXPECT_GT(fast->info().file_bytes, fast->info().logical_bytes);  // stored frames
  EXPECT_LT(slow->info().file_bytes, slow->info().logical_bytes);  // compressed frames
  ExpectFileHolds(dir.file("fast.st"), st);
  ExpectFileHolds(dir.file("slow.st"), st);
  format::codec::AutoChoice after_choice;
  EXPECT_EQ(
      format::codec::DefaultAutoModel().LastEstimateForTesting(&after_choice).disk_bytes_per_s,
      before);
  EXPECT_EQ(after_choice, untouched);
}

// kZstd's default learns from its engine's saves: the first save, with no
// disk speed measured yet, compresses every frame; once the model has one,
// frames whose compression does not pay are stored (still version 2), and
// always_compress keeps compressing them.
TEST(EngineAutoTest, DefaultZstdStoresWhatDoesNotPayOnceItKnowsTheDisk) {
  TempDir dir;
  StateDict st;
  st.set("w", at::randn({300000}).mul(0.02));  // fp32 noise: zstd saves ~8 %
  EngineOptions o = Options(/*overlap=*/false);
  o.chunk_size = 256 << 10;
  o.fsync = false;
  ASSERT_FALSE(o.always_compress);
  for (bool always : {false, true}) {
    o.always_compress = always;
    Engine e(o);
    const std::string first = dir.file("first"), second = dir.file("second");
    ASSERT_TRUE(e.Save(st, 1, first, /*force=*/true, {}));
    e.auto_model().SetDiskSpeedForTesting(1e12);  // faster than any codec
    ASSERT_TRUE(e.Save(st, 2, second, /*force=*/true, {}));
    auto a = CheckpointReader::Open(first);
    auto b = CheckpointReader::Open(second);
    EXPECT_EQ(a->info().format_version, 2);
    EXPECT_EQ(b->info().format_version, 2);
    EXPECT_LT(a->info().file_bytes, a->info().logical_bytes) << "first save compresses";
    if (always) {
      EXPECT_LT(b->info().file_bytes, b->info().logical_bytes);
    } else {
      EXPECT_GT(b->info().file_bytes, b->info().logical_bytes) << "stored frames";
    }
    ExpectFileHolds(first, st);
    ExpectFileHolds(second, st);
    b->Verify();
  }
}

// pacing_fraction spreads a save's write over that share of the interval
// between save() calls; the first and forced saves are not paced, and
// wait() cuts a paced save short.
TEST(EnginePacingTest, SpreadsTheWriteAndWaitCutsItShort) {
  TempDir dir;
  StateDict st;
  st.set("w", at::randn({262144}));  // 1 MiB: 16 frames of 64 KiB
  EngineOptions o = Options(/*overlap=*/false, Compression::kNone);
  o.fsync = false;
  o.pacing_fraction = 1.0;
  std::mutex mu;
  std::vector<SaveStats> done;
  o.on_save = [&](const SaveStats& stats) {
    std::lock_guard<std::mutex> lock(mu);
    done.push_back(stats);
  };
  auto paced = [&](size_t i) {
    std::lock_guard<std::mutex> lock(mu);
    return done.at(i).paced_seconds;
  };
  Engine e(o);
  ASSERT_TRUE(e.Save(st, 1, dir.file("1"), /*force=*/false, {}));
  e.Wait();
  EXPECT_EQ(paced(0), 0) << "no interval known yet";
  std::this_thread::sleep_for(std::chrono::milliseconds(600));
  // Interval ~0.6 s: the write is spread over ~0.6 s (windows of 4 frames,
  // so it sleeps at least until 3/4 of it).
  const auto t0 = std::chrono::steady_clock::now();
  ASSERT_TRUE(e.Save(st, 2, dir.file("2"), /*force=*/false, {}));
  for (;;) {
    {
      std::lock_guard<std::mutex> lock(mu);
      if (done.size() == 2) break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  const double took = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  EXPECT_GT(paced(1), 0.3);
  EXPECT_GT(took, 0.3);
  std::this_thread::sleep_for(std::chrono::milliseconds(1000));
  // wait() stops the pacing: it returns long before the ~0.7 s pace.
  ASSERT_TRUE(e.Save(st, 3, dir.file("3"), /*force=*/false, {}));
  const auto w0 = std::chrono::steady_clock::now();
  e.Wait();
  EXPECT_LT(std::chrono::duration<double>(std::chrono::steady_clock::now() - w0).count(), 0.5);
  EXPECT_LT(paced(2), 0.5);
  // A forced save is never paced.
  ASSERT_TRUE(e.Save(st, 4, dir.file("4"), /*force=*/true, {}));
  EXPECT_EQ(paced(3), 0);
  for (const char* f : {"1", "2", "3", "4"}) ExpectFileHolds(dir.file(f), st);
  // Out of range is rejected.
  o.pacing_fraction = 1.5;
  EXPECT_EQ(testing::CatchError([&] { Engine bad(o); }).code(), Error::Code::kInvalidArgument);
}

}  // namespace
}  // namespace engine
}  // namespace ackpt
