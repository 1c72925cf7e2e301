#include "checkpointer/store_commit.h"

#include <spdlog/spdlog.h>

#include <chrono>
#include <thread>

#include "ackpt/error.h"
#include "checkpointer/metadata_keys.h"
#include "checkpointer/sharding.h"
#include "io/atomic_file.h"

namespace ackpt {

namespace {

using Clock = std::chrono::steady_clock;

std::string Text(const std::vector<uint8_t>& v) { return std::string(v.begin(), v.end()); }
std::vector<uint8_t> Bytes(const std::string& s) {
  return std::vector<uint8_t>(s.begin(), s.end());
}

}  // namespace

std::string StoreCommit::Key(uint64_t seq, const std::string& what) const {
  return o_.key_prefix + std::to_string(seq) + "/" + what;
}

void StoreCommit::Publish(uint64_t seq, int64_t index, const Manifest::Part& part,
                          const std::map<std::string, double>& metrics) {
  o_.store->set(Key(seq, "part/" + std::to_string(o_.rank)), Bytes(EncodePart(part)));
  const int64_t timeout_ms = static_cast<int64_t>(o_.timeout_seconds * 1000);
  if (o_.rank != 0) {
    // Rank 0 gives up commit_timeout after its own part is durable, which
    // may be later than ours: wait long enough to hear its verdict.
    AwaitVerdict(seq, index, 2 * timeout_ms + 10000);
    return;
  }
  Commit(seq, index, metrics);
}

void StoreCommit::Commit(uint64_t seq, int64_t index,
                         const std::map<std::string, double>& metrics) {
  std::vector<std::string> keys;
  for (int r = 0; r < o_.world; ++r) keys.push_back(Key(seq, "part/" + std::to_string(r)));
  const std::string failed = Key(seq, "failed");
  const auto end =
      Clock::now() + std::chrono::milliseconds(static_cast<int64_t>(o_.timeout_seconds * 1000));
  bool all = false;
  while (!all) {
    // Waits in short slices, so that a rank's Abort() fails the commit at
    // once rather than at the timeout.
    try {
      o_.store->wait(keys, std::chrono::milliseconds(100));
      all = true;
    } catch (const c10::Error&) {
      if (o_.store->check({failed}))
        throw Error(Error::Code::kIOError, Text(o_.store->get(failed)));
      if (Clock::now() > end) break;
    }
  }
  if (!all) {
    std::string missing;
    for (int r = 0; r < o_.world; ++r) {
      if (!o_.store->check({keys[static_cast<size_t>(r)]}))
        missing += (missing.empty() ? "" : ", ") + std::to_string(r);
    }
    const std::string msg =
        "distributed checkpoint " + std::to_string(index) + " did not commit: rank(s) " + missing +
        " did not publish their part within " + std::to_string(o_.timeout_seconds) + " s";
    o_.store->set(Key(seq, "failed"), Bytes(msg));
    throw Error::TimedOut(msg);
  }
  Manifest m;
  m.index = index;
  m.world_size = o_.world;
  m.time = WallTimeNow();
  m.metrics = metrics;
  m.replicated = o_.replicated;
  for (const auto& k : keys) m.parts.push_back(DecodePart(Text(o_.store->get(k))));
  // The ranks' boxes of sharded tensors must tile each global tensor: a
  // layout that does not never commits, and every rank learns why.
  try {
    GlobalLayout(m, Error::Code::kInvalidArgument,
                 "distributed checkpoint " + std::to_string(index));
  } catch (const Error& e) {
    o_.store->set(Key(seq, "invalid"), Bytes(e.message()));
    throw;
  }
  const CheckpointDir::Lineage lineage = o_.dir->NextLineage();
  m.generation = lineage.generation;
  m.parent = lineage.parent;
  const std::string path = o_.dir->ManifestPath(index);
  const std::string text = EncodeManifest(m);
  AtomicWrite(o_.env.get(), path, o_.fsync,
              [&](WritableFile* f) { f->Append(text.data(), text.size()); });
  o_.dir->RecordManifest(m, path);
  o_.store->set(Key(seq, "committed"), Bytes(o_.copy_manifest ? text : std::string("ok")));
  // Keys no rank reads any more: the parts now, the verdict of two saves
  // ago (every rank has finished waiting for it before publishing this one).
  for (const auto& k : keys) o_.store->deleteKey(k);
  if (seq >= 2) o_.store->deleteKey(Key(seq - 2, "committed"));
}

void StoreCommit::Abort(uint64_t seq, const std::string& why) {
  o_.store->set(Key(seq, "failed"), Bytes("rank " + std::to_string(o_.rank) + ": " + why));
}

void StoreCommit::AwaitVerdict(uint64_t seq, int64_t index, int64_t timeout_ms) {
  const std::string ok = Key(seq, "committed"), failed = Key(seq, "failed"),
                    invalid = Key(seq, "invalid");
  const auto end = Clock::now() + std::chrono::milliseconds(timeout_ms);
  auto pause = std::chrono::milliseconds(1);
  for (;;) {
    if (o_.store->check({ok})) {
      if (o_.copy_manifest) {
        const std::string text = Text(o_.store->get(ok));
        const std::string path = o_.dir->ManifestPath(index);
        const Manifest m = ParseManifest(text, path);
        AtomicWrite(o_.env.get(), path, o_.fsync,
                    [&](WritableFile* f) { f->Append(text.data(), text.size()); });
        o_.dir->RecordManifest(m, path);
      }
      return;
    }
    if (o_.store->check({failed})) throw Error::TimedOut(Text(o_.store->get(failed)));
    if (o_.store->check({invalid})) throw Error::InvalidArgument(Text(o_.store->get(invalid)));
    if (Clock::now() > end) {
      throw Error::TimedOut("distributed checkpoint " + std::to_string(index) +
                            ": no verdict from rank 0 within " + std::to_string(timeout_ms / 1000) +
                            " s (is rank 0 alive?)");
    }
    std::this_thread::sleep_for(pause);
    pause = std::min(pause * 2, std::chrono::milliseconds(50));
  }
}

}  // namespace ackpt
