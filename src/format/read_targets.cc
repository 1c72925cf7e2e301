// Reading tensors into place (format/read_targets.h).
#include "format/read_targets.h"

#include <algorithm>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <string>

#include "ackpt/error.h"
#include "format/checksum.h"
#include "format/parallel.h"
#include "format/zstd_context.h"

namespace ackpt {
namespace format {

namespace {

// Loading a plain file reads each tensor in blocks of this size straight into
// its destination and hashes each block right after it lands: 1 MiB stays in
// a core's L2 (2 MiB here) between the pread's copy and the hash, so the
// checksum costs no second trip to memory. Larger blocks measured no faster.
constexpr uint64_t kLoadBlock = 1 << 20;

// Per-tensor XXH3 over bytes that land in any order, from any thread, hashed
// in order. XXH3 cannot combine partial hashes, so each tensor has one
// streaming state; the thread that lands the next piece in order becomes the
// tensor's hasher and also hashes every piece already waiting behind it,
// while other threads just record theirs and move on. Pieces mostly land in
// order (work is handed out front to back), so most are hashed by the thread
// that just wrote them, while they are still in its cache.
class OrderedHasher {
 public:
  explicit OrderedHasher(size_t n) : slots_(n) {}

  void Enable(size_t i, const uint8_t* base) {
    Slot& s = slots_[i];
    s.state = std::make_unique<Xxh3Stream>();
    s.base = base;
  }
  bool enabled(size_t i) const { return slots_[i].state != nullptr; }

  // Bytes [b, e) of tensor i are in place.
  void Landed(size_t i, uint64_t b, uint64_t e) {
    Slot& s = slots_[i];
    if (!s.state || b == e) return;
    std::unique_lock<std::mutex> lock(s.mu);
    s.ready.emplace(b, e);
    if (s.busy) return;
    s.busy = true;
    for (;;) {
      auto it = s.ready.find(s.next);
      if (it == s.ready.end()) break;
      const uint64_t pb = it->first, pe = it->second;
      s.ready.erase(it);
      lock.unlock();
      s.state->Update(s.base + pb, static_cast<size_t>(pe - pb));
      lock.lock();
      s.next = pe;
    }
    s.busy = false;
  }

  // The digest once all `n` bytes of tensor i have landed.
  uint64_t Digest(size_t i, uint64_t n) const {
    const Slot& s = slots_[i];
    if (s.next != n) {
      throw Error(Error::Code::kIOError, "internal: tensor hashed " + std::to_string(s.next) +
                                             " of " + std::to_string(n) + " bytes");
    }
    return s.state->Digest();
  }

 private:
  struct Slot {
    std::mutex mu;
    std::unique_ptr<Xxh3Stream> state;
    const uint8_t* base = nullptr;
    uint64_t next = 0;                   // bytes hashed so far
    bool busy = false;                   // a thread is hashing
    std::map<uint64_t, uint64_t> ready;  // landed, not yet hashed: begin -> end
  };
  std::vector<Slot> slots_;
};

// Plain file: work is handed out in runs of consecutive kLoadBlock preads
// of one tensor, so the thread that reads a run also hashes each block right
// after it lands, while it is still in that core's cache. Per-block work
// handed out round-robin made one thread the hasher of blocks other cores
// had read (a trip to L3 or memory) while they waited on its lock; a run per
// thread keeps each tensor's hash on the core that holds its bytes. A tensor
// larger than a run is split so threads stay balanced: its later runs land
// out of order and are hashed by whichever thread finishes the run before.
void ReadPlainInto(const std::vector<Target>& targets, const RandomAccessFile& file,
                   const FileInfo& info, const ReadOptions& options, OrderedHasher* hasher) {
  struct Run {
    size_t target;
    uint64_t offset;  // in the tensor
    uint64_t n;
  };
  uint64_t total = 0;
  for (const auto& t : targets) total += t.info->nbytes();
  const int threads = ResolveThreads(options.threads);
  // Several runs per thread keep the tail short; at least a few blocks per
  // run keep the split tensors few.
  const uint64_t run_bytes = std::max<uint64_t>(
      4 * kLoadBlock,
      (total / (8 * static_cast<uint64_t>(threads)) + kLoadBlock - 1) / kLoadBlock * kLoadBlock);
  std::vector<Run> runs;
  for (size_t i = 0; i < targets.size(); ++i) {
    const uint64_t size = targets[i].info->nbytes();
    for (uint64_t off = 0; off < size; off += run_bytes) {
      runs.push_back({i, off, std::min<uint64_t>(run_bytes, size - off)});
    }
  }
  ParallelFor(runs.size(), threads, [&](size_t k) {
    const Run& r = runs[k];
    const Target& t = targets[r.target];
    const bool hash = hasher->enabled(r.target);
    // Unhashed bytes need no cache-sized steps: read the run at once.
    const uint64_t step = hash ? kLoadBlock : r.n;
    for (uint64_t off = r.offset; off < r.offset + r.n; off += step) {
      const size_t n = static_cast<size_t>(std::min<uint64_t>(step, r.offset + r.n - off));
      file.Read(info.header_bytes + t.info->begin + off, n, t.data + off);
      hasher->Landed(r.target, off, off + n);
    }
  });
}

// Compressed file: decompresses only the frames overlapping the targets,
// in parallel, front to back. A frame that lies inside one target is
// decompressed straight into it; a frame shared with other tensors (or
// holding bytes nobody asked for) goes through this thread's frame-sized
// scratch buffer. Each piece is hashed as soon as it lands.
void ReadFramesInto(const std::vector<Target>& targets, const FileInfo& info,
                    const FrameReader& frames, const ReadOptions& options, OrderedHasher* hasher) {
  struct Piece {
    size_t target;
    uint64_t frame_offset;
    uint64_t tensor_offset;
    uint64_t n;
  };
  struct Job {
    size_t frame;
    std::vector<Piece> pieces;
  };
  std::vector<Job> jobs;
  for (size_t k = 0; k < targets.size(); ++k) {
    const TensorInfo& t = *targets[k].info;
    const uint64_t begin = info.header_bytes + t.begin, end = info.header_bytes + t.end;
    if (end > frames.table().logical_bytes)
      frames.Corrupt("tensor data beyond the end of the stream");
    for (size_t i = frames.table().FrameAt(begin); i < frames.table().num_frames(); ++i) {
      const FrameEntry f = frames.table().frame(i);
      if (f.decompressed_offset >= end) break;
      const uint64_t b = std::max(begin, f.decompressed_offset);
      const uint64_t e = std::min(end, f.decompressed_offset + f.decompressed_size);
      if (b >= e) continue;
      if (jobs.empty() || jobs.back().frame != i) jobs.push_back({i, {}});
      jobs.back().pieces.push_back({k, b - f.decompressed_offset, b - begin, e - b});
    }
  }
  ParallelFor(jobs.size(), options.threads, [&](size_t j) {
    const Job& job = jobs[j];
    const uint32_t size = frames.table().frame(job.frame).decompressed_size;
    const Piece& first = job.pieces[0];
    if (job.pieces.size() == 1 && first.frame_offset == 0 && first.n == size) {
      frames.DecompressFrame(
          job.frame, [&](uint64_t) { return targets[first.target].data + first.tensor_offset; });
    } else {
      ThreadBuffer& scratch = ThreadScratch(BufferUse::kFrame);
      uint8_t* buf = nullptr;
      frames.DecompressFrame(job.frame, [&](uint64_t n) { return buf = scratch.Get(n); });
      for (const auto& p : job.pieces) {
        std::memcpy(targets[p.target].data + p.tensor_offset, buf + p.frame_offset, p.n);
      }
      scratch.Trim();
    }
    ThreadScratch(BufferUse::kCompressedFrame).Trim();
    for (const auto& p : job.pieces) {
      hasher->Landed(p.target, p.tensor_offset, p.tensor_offset + p.n);
    }
  });
}

}  // namespace

void ReadTargets(std::vector<Target> targets, const RandomAccessFile& file, const FileInfo& info,
                 const FrameReader& frames, const ReadOptions& options) {
  if (targets.empty()) return;
  std::sort(targets.begin(), targets.end(),
            [](const Target& a, const Target& b) { return a.info->begin < b.info->begin; });
  OrderedHasher hasher(targets.size());
  if (options.verify_checksums) {
    for (size_t i = 0; i < targets.size(); ++i) {
      if (targets[i].info->has_checksum) hasher.Enable(i, targets[i].data);
    }
  }
  if (info.compressed) {
    ReadFramesInto(targets, info, frames, options, &hasher);
  } else {
    ReadPlainInto(targets, file, info, options, &hasher);
  }
  for (size_t i = 0; i < targets.size(); ++i) {
    const TensorInfo& t = *targets[i].info;
    if (hasher.enabled(i) && hasher.Digest(i, t.nbytes()) != t.xxh3) {
      throw Error::Corruption("checksum mismatch in tensor '" + t.name + "' of '" + info.path +
                              "'");
    }
  }
}

}  // namespace format
}  // namespace ackpt
