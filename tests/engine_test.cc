// White-box tests of the engine's building blocks: staging pool, task pool, snapshot copy.
#include <ATen/ATen.h>

#include <atomic>
#include <chrono>
#include <future>
#include <thread>

#include "ackpt/error.h"
#include "engine/snapshot.h"
#include "engine/staging_pool.h"
#include "engine/task_pool.h"
#include "test_util.h"

namespace ackpt {
namespace engine {
namespace {

using testing::PatternTensor;

TEST(StagingPoolTest, SteadyStateReusesBuffersWithoutAllocating) {
  StagingPool pool(/*budget=*/64 << 20, /*pin=*/true, nullptr);
  for (int i = 0; i < 100; ++i) {
    auto lease = pool.Acquire(5 << 20, false, true);
    ASSERT_NE(lease, nullptr);
    EXPECT_EQ(reinterpret_cast<uintptr_t>(lease->data()) % 4096, 0u);  // page-aligned
    std::memset(lease->data(), i, 5 << 20);
  }
  EXPECT_EQ(pool.allocations(), 1u);
  // Two in flight at once: a second buffer, then both are reused.
  for (int i = 0; i < 50; ++i) {
    auto a = pool.Acquire(5 << 20, false, true);
    auto b = pool.Acquire(5 << 20, false, true);
    EXPECT_NE(a->data(), b->data());
  }
  EXPECT_EQ(pool.allocations(), 2u);
  EXPECT_LE(pool.peak(), 64u << 20);
}

TEST(StagingPoolTest, BudgetBoundsMemoryAndBlocksOrRefuses) {
  StagingPool pool(/*budget=*/8 << 20, false, nullptr);
  auto a = pool.Acquire(3 << 20, false, true);  // rounds to 4 MiB
  auto b = pool.Acquire(3 << 20, false, true);
  EXPECT_EQ(pool.reserved(), 8u << 20);
  EXPECT_EQ(pool.Acquire(1, false, /*wait=*/false), nullptr);
  auto waiter =
      std::async(std::launch::async, [&] { return pool.Acquire(3 << 20, false, true) != nullptr; });
  EXPECT_EQ(waiter.wait_for(std::chrono::milliseconds(100)), std::future_status::timeout);
  a.reset();
  EXPECT_TRUE(waiter.get());
  EXPECT_LE(pool.peak(), 8u << 20);
  EXPECT_THROW(pool.Acquire(9 << 20, false, true), Error);
}

TEST(StagingPoolTest, IdleBuffersOfTheWrongSizeAreFreedToMakeRoom) {
  StagingPool pool(/*budget=*/8 << 20, false, nullptr);
  { auto small = pool.Acquire(1 << 20, false, true); }  // 2 MiB idle
  { auto mid = pool.Acquire(5 << 20, false, true); }    // 6 MiB: fits next to it
  auto big = pool.Acquire(7 << 20, false, true);        // 8 MiB: both idle ones go
  EXPECT_EQ(pool.reserved(), 8u << 20);
  EXPECT_LE(pool.peak(), 8u << 20);
}

TEST(StagingPoolTest, AutoBudgetIsTwiceTheLargestRequest) {
  StagingPool pool(/*budget=*/0, false, nullptr);
  auto a = pool.Acquire(3 << 20, false, true);
  EXPECT_EQ(pool.budget(), 8u << 20);
  auto b = pool.Acquire(3 << 20, false, true);
  EXPECT_EQ(pool.Acquire(3 << 20, false, false), nullptr);
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

TEST(SnapshotTest, CopiesContiguousStridedAndEmptyTensorsExactly) {
  std::vector<format::FlatTensor> flat;
  at::Tensor big = PatternTensor({3000, 1000}, at::kFloat, 1);  // several copy pieces
  flat.push_back({"big", big});
  flat.push_back({"t", PatternTensor({64, 48}, at::kDouble, 2).t()});
  flat.push_back({"step", PatternTensor({100, 10}, at::kBFloat16, 3).slice(0, 0, 100, 3)});
  flat.push_back({"empty", at::empty({0, 5})});
  flat.push_back({"scalar", at::scalar_tensor(7, at::kLong)});
  flat.push_back({"neg_view", at::_neg_view(PatternTensor({10}, at::kFloat, 4))});
  const std::vector<format::FlatTensor> originals = flat;
  bool any_device = true;
  const uint64_t bytes = PlanSnapshot(&flat, &any_device);
  EXPECT_FALSE(any_device);
  std::vector<uint8_t> buf(bytes + 64);
  uint8_t* base = buf.data() + (64 - reinterpret_cast<uintptr_t>(buf.data()) % 64) % 64;
  TaskPool pool(1);
  CopySnapshot(&flat, base, &pool);
  for (size_t i = 0; i < flat.size(); ++i) {
    EXPECT_EQ(flat[i].staging_offset % 64, 0u);
    // The snapshot holds no reference to the caller's tensor; its bytes are staged.
    EXPECT_FALSE(flat[i].tensor.defined()) << flat[i].name;
    EXPECT_EQ(flat[i].data, flat[i].nbytes ? base + flat[i].staging_offset : nullptr);
    at::Tensor copy = at::from_blob(base + flat[i].staging_offset, flat[i].shape,
                                    at::TensorOptions().dtype(flat[i].dtype));
    EXPECT_TRUE(at::equal(copy, originals[i].tensor)) << flat[i].name;
  }
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

}  // namespace
}  // namespace engine
}  // namespace ackpt
