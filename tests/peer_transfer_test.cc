// Peer file transfer over a checkpoint process group (src/checkpointer/
// peer_transfer.h): ranks are threads of this process, each with its own
// Gloo group over one FileStore on 127.0.0.1. Files of 0, 1, 3.5 and 4
// chunks around a ring, one-sided exchanges, ShareFile to a subset, and the
// failures: a missing file, a failed write, a failed read, a peer that
// never comes, two exchanges at once on different tags.
#include "checkpointer/peer_transfer.h"

#include <gtest/gtest.h>

#include <chrono>
#include <exception>
#include <functional>
#include <mutex>
#include <string>
#include <thread>
#include <torch/csrc/distributed/c10d/FileStore.hpp>
#include <vector>

#include "ackpt/error.h"
#include "test_util.h"

namespace ackpt {
namespace {

using testing::CatchError;
using testing::Contains;
using testing::FaultInjectionEnv;
using testing::ListDir;
using testing::Op;
using testing::ReadFileBytes;
using testing::TempDir;
using testing::WriteFileBytes;

constexpr size_t kChunk = 1024;

// Runs fn(rank) on `world` threads at once; an exception escaping fn is a
// test failure naming the rank.
void OnRanks(int world, const std::function<void(int)>& fn) {
  std::mutex mu;
  std::vector<std::string> escaped;
  std::vector<std::thread> threads;
  for (int r = 0; r < world; ++r) {
    threads.emplace_back([&, r] {
      try {
        fn(r);
      } catch (const std::exception& e) {
        std::lock_guard<std::mutex> lock(mu);
        escaped.push_back("rank " + std::to_string(r) + ": " + e.what());
      }
    });
  }
  for (auto& t : threads) t.join();
  for (const auto& e : escaped) ADD_FAILURE() << e;
}

// `world` checkpoint groups, one per thread-rank, over one FileStore.
struct Ranks {
  Ranks(const TempDir& dir, int world, double timeout_seconds = 3) : groups(world) {
    OnRanks(world, [&](int r) {
      auto store = c10::make_intrusive<c10d::FileStore>(dir.file("store"), world);
      groups[r] = CreateCheckpointGroup(store, "ckpt/", r, world, "127.0.0.1", timeout_seconds);
    });
    for (auto& g : groups) EXPECT_TRUE(g) << "a group was not created";
  }
  PeerTransferOptions Options(int rank, double timeout_seconds = 3) const {
    PeerTransferOptions o;
    o.group = groups[rank];
    o.chunk_bytes = kChunk;
    o.fsync = false;
    o.timeout_seconds = timeout_seconds;
    return o;
  }
  std::vector<c10::intrusive_ptr<c10d::ProcessGroup>> groups;
};

// Deterministic bytes that differ per seed (so misrouted chunks show).
std::string Pattern(size_t n, int seed) {
  std::string s(n, '\0');
  uint32_t x = 2654435761u * static_cast<uint32_t>(seed + 1);
  for (size_t i = 0; i < n; ++i) {
    x = x * 1664525u + 1013904223u;
    s[i] = static_cast<char>(x >> 24);
  }
  return s;
}

std::string RankDir(const TempDir& dir, int r) {
  const std::string d = dir.file("rank" + std::to_string(r));
  Env::Default()->CreateDirs(d);
  return d;
}

double SecondsSince(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

TEST(PeerTransferTest, RingOfFourExchangesFilesOfEverySize) {
  TempDir dir;
  constexpr int kWorld = 4;
  Ranks ranks(dir, kWorld);
  // 0 bytes, 1 byte, 3.5 chunks, exactly 4 chunks.
  const std::vector<size_t> sizes = {0, 1, kChunk * 7 / 2, kChunk * 4};
  std::vector<std::string> dirs, content;
  for (int r = 0; r < kWorld; ++r) {
    dirs.push_back(RankDir(dir, r));
    content.push_back(Pattern(sizes[r], r));
    WriteFileBytes(dirs[r] + "/part", content[r]);
  }
  // Each rank's Env records its reads: the sender reads chunk by chunk.
  std::vector<FaultInjectionEnv> envs(kWorld);
  // k = 1 (a ring) and k = 2 (pairs swapping: to == from).
  for (int k : {1, 2}) {
    OnRanks(kWorld, [&](int r) {
      const int to = (r + k) % kWorld;
      const int from = (r - k + kWorld) % kWorld;
      const std::string recv = dirs[r] + "/replica_k" + std::to_string(k);
      PeerTransferOptions o = ranks.Options(r);
      o.env = &envs[r];
      const uint64_t got = ExchangeFiles(o, dirs[r] + "/part", to, recv, from, /*tag=*/k);
      EXPECT_EQ(got, sizes[from]) << "rank " << r << " k " << k;
      EXPECT_TRUE(ReadFileBytes(recv) == content[from]) << "rank " << r << " k " << k;
    });
  }
  for (int r = 0; r < kWorld; ++r) {
    EXPECT_EQ(ListDir(dirs[r]), (std::vector<std::string>{"part", "replica_k1", "replica_k2"}))
        << "no temp file is left";
    const auto reads = envs[r].reads();
    EXPECT_EQ(reads.size(), 2 * ((sizes[r] + kChunk - 1) / kChunk)) << r;
    for (const auto& read : reads) EXPECT_LE(read.length, kChunk) << r;
  }
}

TEST(PeerTransferTest, EitherSideMayBeSkipped) {
  TempDir dir;
  Ranks ranks(dir, 3);
  const std::string a = RankDir(dir, 0), b = RankDir(dir, 1), c = RankDir(dir, 2);
  const std::string content = Pattern(kChunk * 2 + 5, 7);
  WriteFileBytes(a + "/part", content);
  uint64_t got[3] = {99, 99, 99};
  // 0 -> 1 only; 2 takes no part.
  OnRanks(3, [&](int r) {
    if (r == 0) got[0] = ExchangeFiles(ranks.Options(0), a + "/part", 1, "", -1, 5);
    if (r == 1) got[1] = ExchangeFiles(ranks.Options(1), "", -1, b + "/in", 0, 5);
    if (r == 2) got[2] = ExchangeFiles(ranks.Options(2), "", -1, "", -1, 5);
  });
  EXPECT_EQ(got[0], 0u);
  EXPECT_EQ(got[1], content.size());
  EXPECT_EQ(got[2], 0u);
  EXPECT_TRUE(ReadFileBytes(b + "/in") == content);
  EXPECT_TRUE(ListDir(c).empty());
}

TEST(PeerTransferTest, ShareFileReachesOnlyTheRanksThatWantIt) {
  TempDir dir;
  constexpr int kWorld = 4;
  constexpr int kHolder = 2;
  Ranks ranks(dir, kWorld);
  std::vector<std::string> dirs;
  for (int r = 0; r < kWorld; ++r) dirs.push_back(RankDir(dir, r));
  const std::string content = Pattern(kChunk * 5 + 300, 3);
  WriteFileBytes(dirs[kHolder] + "/part", content);
  const std::vector<bool> want = {true, false, true, true};  // the holder's flag is ignored
  std::vector<uint64_t> got(kWorld, 99);
  OnRanks(kWorld, [&](int r) {
    got[r] = ShareFile(ranks.Options(r), kHolder, dirs[r] + "/part", want[r], dirs[r] + "/copy",
                       /*tag=*/9);
  });
  EXPECT_EQ(got, (std::vector<uint64_t>{content.size(), 0, 0, content.size()}));
  EXPECT_TRUE(ReadFileBytes(dirs[0] + "/copy") == content);
  EXPECT_TRUE(ReadFileBytes(dirs[3] + "/copy") == content);
  EXPECT_TRUE(ListDir(dirs[1]).empty()) << "rank 1 did not want it";
  EXPECT_EQ(ListDir(dirs[kHolder]), std::vector<std::string>{"part"});

  // Nobody wants it: nothing is read, nothing moves, even with no file.
  OnRanks(kWorld, [&](int r) {
    EXPECT_EQ(ShareFile(ranks.Options(r), 1, dirs[r] + "/absent", false, dirs[r] + "/x", 10), 0u);
  });
}

TEST(PeerTransferTest, MissingSendFileFailsTheReceiverAtOnce) {
  TempDir dir;
  Ranks ranks(dir, 2);
  const std::string a = RankDir(dir, 0), b = RankDir(dir, 1);
  std::vector<Error> errors(2, Error(Error::Code::kIOError, "none"));
  const auto t0 = std::chrono::steady_clock::now();
  OnRanks(2, [&](int r) {
    errors[r] = CatchError([&] {
      if (r == 0) ExchangeFiles(ranks.Options(0), a + "/absent", 1, "", -1, 3);
      if (r == 1) ExchangeFiles(ranks.Options(1), "", -1, b + "/in", 0, 3);
    });
  });
  // In the header, not by a timeout (3 s).
  EXPECT_LT(SecondsSince(t0), 2.0);
  EXPECT_EQ(errors[1].code(), Error::Code::kNotFound) << errors[1].what();
  EXPECT_TRUE(Contains(errors[1].message(), "rank 0")) << errors[1].what();
  EXPECT_TRUE(Contains(errors[1].message(), b + "/in")) << errors[1].what();
  EXPECT_TRUE(Contains(errors[1].message(), "tag 3")) << errors[1].what();
  EXPECT_EQ(errors[0].code(), Error::Code::kNotFound) << errors[0].what();
  EXPECT_TRUE(Contains(errors[0].message(), a + "/absent")) << errors[0].what();
  EXPECT_TRUE(ListDir(b).empty()) << "neither recv_path nor a temp file";

  // Both sides finished the stream: the same tag works again.
  WriteFileBytes(a + "/part", "hello");
  OnRanks(2, [&](int r) {
    if (r == 0) ExchangeFiles(ranks.Options(0), a + "/part", 1, "", -1, 3);
    if (r == 1) EXPECT_EQ(ExchangeFiles(ranks.Options(1), "", -1, b + "/in", 0, 3), 5u);
  });
  EXPECT_EQ(ReadFileBytes(b + "/in"), "hello");
}

TEST(PeerTransferTest, FailedWriteOnTheReceiverLeavesNoTempFile) {
  TempDir dir;
  Ranks ranks(dir, 2);
  const std::string a = RankDir(dir, 0), b = RankDir(dir, 1);
  const std::string content = Pattern(kChunk * 7 / 2, 1);
  WriteFileBytes(a + "/part", content);
  WriteFileBytes(b + "/in", "old");  // recv_path is left as it was
  FaultInjectionEnv fault;
  fault.FailOp(Op::kAppend, ENOSPC, /*count=*/1, /*skip=*/1);  // the second chunk
  Error error(Error::Code::kTimedOut, "none");
  uint64_t sent = 99;
  OnRanks(2, [&](int r) {
    if (r == 0) sent = ExchangeFiles(ranks.Options(0), a + "/part", 1, "", -1, 4);
    if (r == 1) {
      PeerTransferOptions o = ranks.Options(1);
      o.env = &fault;
      error = CatchError([&] { ExchangeFiles(o, "", -1, b + "/in", 0, 4); });
    }
  });
  EXPECT_EQ(sent, 0u) << "the sender finished: the receiver kept receiving";
  EXPECT_EQ(error.code(), Error::Code::kIOError) << error.what();
  EXPECT_TRUE(Contains(error.message(), "No space left")) << error.what();
  EXPECT_TRUE(Contains(error.message(), "rank 0")) << error.what();
  EXPECT_EQ(ListDir(b), std::vector<std::string>{"in"}) << "the temp file was removed";
  EXPECT_EQ(ReadFileBytes(b + "/in"), "old");

  // A failed rename (after the last message) is reported the same way.
  fault.Clear();
  fault.FailOp(Op::kRename, EIO, 1);
  OnRanks(2, [&](int r) {
    if (r == 0) ExchangeFiles(ranks.Options(0), a + "/part", 1, "", -1, 4);
    if (r == 1) {
      PeerTransferOptions o = ranks.Options(1);
      o.env = &fault;
      error = CatchError([&] { ExchangeFiles(o, "", -1, b + "/in", 0, 4); });
    }
  });
  EXPECT_EQ(error.code(), Error::Code::kIOError) << error.what();
  EXPECT_TRUE(Contains(error.message(), "rename")) << error.what();
  EXPECT_EQ(ListDir(b), std::vector<std::string>{"in"});

  // So is a temp file that cannot be created (before any message arrived):
  // the receiver still drains the stream, the sender finishes.
  fault.Clear();
  fault.FailOp(Op::kOpenWrite, EACCES, 1);
  sent = 99;
  OnRanks(2, [&](int r) {
    if (r == 0) sent = ExchangeFiles(ranks.Options(0), a + "/part", 1, "", -1, 4);
    if (r == 1) {
      PeerTransferOptions o = ranks.Options(1);
      o.env = &fault;
      error = CatchError([&] { ExchangeFiles(o, "", -1, b + "/in", 0, 4); });
    }
  });
  EXPECT_EQ(sent, 0u);
  EXPECT_EQ(error.code(), Error::Code::kIOError) << error.what();
  EXPECT_TRUE(Contains(error.message(), "creating its temp file")) << error.what();
  EXPECT_EQ(ListDir(b), std::vector<std::string>{"in"});

  // Still in step on that tag.
  fault.Clear();
  OnRanks(2, [&](int r) {
    if (r == 0) ExchangeFiles(ranks.Options(0), a + "/part", 1, "", -1, 4);
    if (r == 1) {
      PeerTransferOptions o = ranks.Options(1);
      o.env = &fault;
      EXPECT_EQ(ExchangeFiles(o, "", -1, b + "/in", 0, 4), content.size());
    }
  });
  EXPECT_TRUE(ReadFileBytes(b + "/in") == content);
}

TEST(PeerTransferTest, FailedReadOnTheSenderFailsBothSides) {
  TempDir dir;
  Ranks ranks(dir, 2);
  const std::string a = RankDir(dir, 0), b = RankDir(dir, 1);
  WriteFileBytes(a + "/part", Pattern(kChunk * 3, 2));
  FaultInjectionEnv fault;
  fault.FailOp(Op::kRead, EIO, 1, /*skip=*/1);
  std::vector<Error> errors(2, Error(Error::Code::kTimedOut, "none"));
  OnRanks(2, [&](int r) {
    PeerTransferOptions o = ranks.Options(r);
    errors[r] = CatchError([&] {
      if (r == 0) {
        o.env = &fault;
        ExchangeFiles(o, a + "/part", 1, "", -1, 6);
      }
      if (r == 1) ExchangeFiles(o, "", -1, b + "/in", 0, 6);
    });
  });
  EXPECT_EQ(errors[0].code(), Error::Code::kIOError) << errors[0].what();
  EXPECT_TRUE(Contains(errors[0].message(), "byte 1024")) << errors[0].what();
  EXPECT_EQ(errors[1].code(), Error::Code::kIOError) << errors[1].what();
  EXPECT_TRUE(Contains(errors[1].message(), "rank 0 failed reading")) << errors[1].what();
  EXPECT_TRUE(ListDir(b).empty());
}

TEST(PeerTransferTest, ShareFileOfAMissingFileFailsTheWantingRanks) {
  TempDir dir;
  constexpr int kWorld = 3;
  Ranks ranks(dir, kWorld);
  std::vector<std::string> dirs;
  for (int r = 0; r < kWorld; ++r) dirs.push_back(RankDir(dir, r));
  std::vector<Error> errors(kWorld, Error(Error::Code::kIOError, "none"));
  uint64_t got_unwanting = 99;
  OnRanks(kWorld, [&](int r) {
    if (r == 2) {
      got_unwanting = ShareFile(ranks.Options(r), 0, "", false, dirs[r] + "/copy", 2);
      return;
    }
    errors[r] = CatchError(
        [&] { ShareFile(ranks.Options(r), 0, dirs[r] + "/absent", true, dirs[r] + "/copy", 2); });
  });
  EXPECT_EQ(got_unwanting, 0u);
  EXPECT_EQ(errors[0].code(), Error::Code::kNotFound) << errors[0].what();
  EXPECT_TRUE(Contains(errors[0].message(), dirs[0] + "/absent")) << errors[0].what();
  EXPECT_EQ(errors[1].code(), Error::Code::kNotFound) << errors[1].what();
  EXPECT_TRUE(Contains(errors[1].message(), "rank 0 has no file")) << errors[1].what();
  for (int r = 0; r < kWorld; ++r) EXPECT_TRUE(ListDir(dirs[r]).empty()) << r;
}

TEST(PeerTransferTest, ChunkSizeMismatchIsReported) {
  TempDir dir;
  Ranks ranks(dir, 2);
  const std::string a = RankDir(dir, 0), b = RankDir(dir, 1);
  WriteFileBytes(a + "/part", Pattern(kChunk * 3, 4));
  std::vector<Error> errors(2, Error(Error::Code::kIOError, "none"));
  OnRanks(2, [&](int r) {
    PeerTransferOptions o = ranks.Options(r, /*timeout_seconds=*/1);
    errors[r] = CatchError([&] {
      if (r == 0) ExchangeFiles(o, a + "/part", 1, "", -1, 7);
      o.chunk_bytes = kChunk / 2;
      if (r == 1) ExchangeFiles(o, "", -1, b + "/in", 0, 7);
    });
  });
  // Gloo's sends wait for the matching receive: the sender times out.
  EXPECT_EQ(errors[0].code(), Error::Code::kTimedOut) << errors[0].what();
  EXPECT_TRUE(Contains(errors[0].message(), "chunk 1 of 3 to rank 1")) << errors[0].what();
  EXPECT_EQ(errors[1].code(), Error::Code::kInvalidArgument) << errors[1].what();
  EXPECT_TRUE(Contains(errors[1].message(), "chunk_bytes")) << errors[1].what();
  EXPECT_TRUE(ListDir(b).empty());
}

TEST(PeerTransferTest, AbsentPeerTimesOut) {
  TempDir dir;
  Ranks ranks(dir, 2);
  const std::string b = RankDir(dir, 1);
  // Rank 0 never sends.
  const auto t0 = std::chrono::steady_clock::now();
  Error error = CatchError(
      [&] { ExchangeFiles(ranks.Options(1, /*timeout_seconds=*/1), "", -1, b + "/in", 0, 8); });
  const double took = SecondsSince(t0);
  EXPECT_GE(took, 0.9);
  EXPECT_LT(took, 3.0);
  EXPECT_EQ(error.code(), Error::Code::kTimedOut) << error.what();
  EXPECT_TRUE(Contains(error.message(), "rank 0")) << error.what();
  EXPECT_TRUE(Contains(error.message(), b + "/in")) << error.what();
  EXPECT_TRUE(ListDir(b).empty());
}

TEST(PeerTransferTest, ConcurrentExchangesWithDifferentTagsDoNotMix) {
  TempDir dir;
  constexpr int kWorld = 3;
  Ranks ranks(dir, kWorld);
  std::vector<std::string> dirs;
  for (int r = 0; r < kWorld; ++r) {
    dirs.push_back(RankDir(dir, r));
    // Many small chunks each, so the two streams interleave on every pair.
    WriteFileBytes(dirs[r] + "/a", Pattern(kChunk * 40 + 17, 10 + r));
    WriteFileBytes(dirs[r] + "/b", Pattern(kChunk * 40 + 17, 20 + r));
  }
  OnRanks(kWorld, [&](int r) {
    const int next = (r + 1) % kWorld, prev = (r + kWorld - 1) % kWorld;
    // Tag 11 forwards around the ring, tag 12 backwards, from two threads.
    std::thread other([&] {
      ExchangeFiles(ranks.Options(r), dirs[r] + "/b", prev, dirs[r] + "/got_b", next, 12);
    });
    ExchangeFiles(ranks.Options(r), dirs[r] + "/a", next, dirs[r] + "/got_a", prev, 11);
    other.join();
  });
  for (int r = 0; r < kWorld; ++r) {
    const int next = (r + 1) % kWorld, prev = (r + kWorld - 1) % kWorld;
    EXPECT_TRUE(ReadFileBytes(dirs[r] + "/got_a") == ReadFileBytes(dirs[prev] + "/a")) << r;
    EXPECT_TRUE(ReadFileBytes(dirs[r] + "/got_b") == ReadFileBytes(dirs[next] + "/b")) << r;
  }
}

TEST(PeerTransferTest, BadArgumentsAreRejectedBeforeAnyMessage) {
  TempDir dir;
  Ranks ranks(dir, 2);
  auto o = ranks.Options(0);
  EXPECT_EQ(CatchError([&] { ExchangeFiles(o, "x", 0, "", -1, 1); }).code(),
            Error::Code::kInvalidArgument);  // to self
  EXPECT_EQ(CatchError([&] { ExchangeFiles(o, "x", 2, "", -1, 1); }).code(),
            Error::Code::kInvalidArgument);  // no rank 2
  EXPECT_EQ(CatchError([&] { ExchangeFiles(o, "x", 1, "", -1, kMaxPeerTransferTag + 1); }).code(),
            Error::Code::kInvalidArgument);
  EXPECT_EQ(CatchError([&] { ShareFile(o, 5, "x", false, "", 1); }).code(),
            Error::Code::kInvalidArgument);
  o.chunk_bytes = 0;
  EXPECT_EQ(CatchError([&] { ExchangeFiles(o, "x", 1, "", -1, 1); }).code(),
            Error::Code::kInvalidArgument);
}

TEST(PeerTransferTest, GroupCreationTimesOutWithoutItsPeers) {
  TempDir dir;
  auto store = c10::make_intrusive<c10d::FileStore>(dir.file("store"), 2);
  const auto t0 = std::chrono::steady_clock::now();
  Error error = CatchError([&] { CreateCheckpointGroup(store, "lonely/", 0, 2, "127.0.0.1", 1); });
  EXPECT_LT(SecondsSince(t0), 5.0);
  EXPECT_EQ(error.code(), Error::Code::kTimedOut) << error.what();
  EXPECT_TRUE(Contains(error.message(), "lonely/")) << error.what();
}

}  // namespace
}  // namespace ackpt
