#include "engine/snapshot.h"

#include <ATen/ATen.h>
#include <c10/core/StreamGuard.h>
#include <c10/core/impl/VirtualGuardImpl.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <thread>
#include <utility>

#include "format/checksum.h"
#include "format/header.h"
#include "format/writer.h"

namespace ackpt {
namespace engine {

namespace {
// Contiguous bytes are split across the pool in ranges of at least this size.
constexpr uint64_t kMinRange = uint64_t{8} << 20;
// A copy that hashes copies this much, then hashes it: small enough to still
// be in the core's L2 (and for memcpy to use cached stores), large enough
// that the hash's per-call cost vanishes.
constexpr uint64_t kHashBlock = uint64_t{256} << 10;

int64_t VersionOf(const at::Tensor& t) {
  // Inference tensors have no version counter.
  return t.is_inference() ? -1 : static_cast<int64_t>(t._version());
}

bool PlainCpu(const at::Tensor& t) {
  return t.device().is_cpu() && t.is_contiguous() && !t.is_neg() && !t.is_conj();
}

// This LibTorch's c10::Event has no synchronize(): poll it, backing off to
// 1 ms (the device-to-host copy of a checkpoint takes milliseconds or more),
// instead of synchronizing the whole side stream, which other code may share.
void WaitForEvent(const c10::Event& event) {
  auto pause = std::chrono::microseconds(20);
  while (!event.query()) {
    std::this_thread::sleep_for(pause);
    pause = std::min<std::chrono::microseconds>(pause * 2, std::chrono::milliseconds(1));
  }
}

// Copies elements [e0, e1) of `t`, in row-major order, to `dst` as
// contiguous bytes: whole rows of dim 0 through one strided copy, the partial
// rows at either end by recursing into them. Works for any strided tensor on
// any device (non_blocking for device-to-pinned-host copies).
void CopyElements(const at::Tensor& t, int64_t e0, int64_t e1, uint8_t* dst, bool non_blocking) {
  if (e0 >= e1) return;
  const auto options = at::TensorOptions().dtype(t.scalar_type());
  const int64_t es = static_cast<int64_t>(t.element_size());
  if (t.dim() == 0) {
    at::from_blob(dst, {}, options).copy_(t, non_blocking);
    return;
  }
  if (t.is_contiguous()) {
    at::from_blob(dst, {e1 - e0}, options)
        .copy_(t.reshape({-1}).narrow(0, e0, e1 - e0), non_blocking);
    return;
  }
  const int64_t row = t.numel() / t.size(0);
  if (row == 0) return;
  if (e0 % row != 0) {  // the tail of a row
    const int64_t r = e0 / row;
    const int64_t end = std::min(e1, (r + 1) * row);
    CopyElements(t.select(0, r), e0 - r * row, end - r * row, dst, non_blocking);
    dst += (end - e0) * es;
    e0 = end;
  }
  const int64_t r0 = e0 / row;
  const int64_t r1 = e1 / row;
  if (r1 > r0) {
    std::vector<int64_t> shape = t.sizes().vec();
    shape[0] = r1 - r0;
    at::from_blob(dst, shape, options).copy_(t.narrow(0, r0, r1 - r0), non_blocking);
    dst += (r1 - r0) * row * es;
    e0 = r1 * row;
  }
  if (e0 < e1) CopyElements(t.select(0, r1), 0, e1 - r1 * row, dst, non_blocking);  // a head
}

void CheckVersion(const format::FlatTensor& t, int64_t recorded) {
  if (recorded < 0 || !t.tensor.defined()) return;
  const int64_t now = VersionOf(t.tensor);
  if (now != recorded) {
    throw TornSnapshot(
        Error::Code::kInvalidArgument,
        "tensor '" + t.name + "' was modified before its snapshot copy finished (version counter " +
            std::to_string(recorded) + " at save(), " + std::to_string(now) +
            " after the copy), so the copy may be torn; the save is discarded. Call "
            "wait_snapshot() before modifying saved tensors (the Trainer calls it before the "
            "optimizer step)");
  }
}
}  // namespace

uint64_t PlanSnapshot(std::vector<format::FlatTensor>* tensors, bool* any_cuda) {
  format::DescribeTensors(tensors);
  format::SortForAlignment(tensors);
  *any_cuda = false;
  uint64_t offset = 0;
  for (auto& t : *tensors) {
    if (!t.tensor.device().is_cpu()) *any_cuda = true;
    t.staging_offset = offset;
    t.data = nullptr;  // the bytes are reached through the SnapshotStream
    offset += t.nbytes;
  }
  return offset;
}

SnapshotPoint RecordSnapshotPoint(const std::vector<format::FlatTensor>& tensors) {
  SnapshotPoint p;
  p.versions.reserve(tensors.size());
  for (const auto& f : tensors) {
    p.versions.push_back(VersionOf(f.tensor));
    const c10::Device d = f.tensor.device();
    if (d.is_cpu()) continue;
    if (std::none_of(p.ready.begin(), p.ready.end(), [&](const auto& r) { return r.first == d; })) {
      c10::impl::VirtualGuardImpl impl(d.type());
      auto ev = std::make_shared<c10::Event>(d.type());
      ev->record(impl.getStream(d));
      p.ready.emplace_back(d, std::move(ev));
    }
  }
  return p;
}

// ---- SnapshotStream ------------------------------------------------------------

SnapshotStream::SnapshotStream(StagingPool* pool, uint64_t bytes, bool cuda_pinned)
    : DataSource(bytes),
      pool_(pool),
      chunk_(pool->chunk_bytes()),
      cuda_pinned_(cuda_pinned),
      chunks_(pool->ChunksFor(bytes), nullptr) {}

SnapshotStream::~SnapshotStream() {
  for (StagingChunk* c : chunks_) {
    if (c != nullptr) pool_->Release(c);
  }
}

bool SnapshotStream::TryTakeAll() {
  std::vector<StagingChunk*> got;
  if (!pool_->TryAcquire(chunks_.size(), cuda_pinned_, &got)) return false;
  std::lock_guard<std::mutex> lock(mu_);
  std::copy(got.begin(), got.end(), chunks_.begin());
  return true;
}

std::vector<uint8_t*> SnapshotStream::Take(size_t first, size_t max_chunks) {
  const size_t limit =
      max_chunks == 0 ? chunks_.size() : std::min(chunks_.size(), first + max_chunks);
  std::vector<uint8_t*> bases;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (consumer_error_) std::rethrow_exception(consumer_error_);
    for (size_t k = first; k < limit && chunks_[k] != nullptr; ++k)
      bases.push_back(chunks_[k]->data);
  }
  if (!bases.empty() || first >= limit) return bases;
  // None held: one chunk, waiting for a writer to free one if need be...
  bool waited = false;
  StagingChunk* c = pool_->Acquire(cuda_pinned_, /*wait=*/true, &waited);
  std::vector<StagingChunk*> taken{c};
  // ...and whatever else is free right now.
  while (first + taken.size() < limit) {
    StagingChunk* more = pool_->Acquire(cuda_pinned_, /*wait=*/false);
    if (more == nullptr) break;
    taken.push_back(more);
  }
  std::lock_guard<std::mutex> lock(mu_);
  for (size_t i = 0; i < taken.size(); ++i) {
    chunks_[first + i] = taken[i];
    bases.push_back(taken[i]->data);
  }
  if (waited) {
    ++waits_;
    streamed_ += std::min<uint64_t>(size(), (first + taken.size()) * chunk_) - first * chunk_;
  }
  if (consumer_error_) std::rethrow_exception(consumer_error_);  // the destructor returns them
  return bases;
}

void SnapshotStream::Publish(uint64_t end) {
  std::lock_guard<std::mutex> lock(mu_);
  published_ = std::max(published_, end);
  cv_.notify_all();
}

void SnapshotStream::Fail(std::exception_ptr error) {
  std::lock_guard<std::mutex> lock(mu_);
  if (!producer_error_) producer_error_ = error;
  cv_.notify_all();
}

uint64_t SnapshotStream::streamed_bytes() const {
  std::lock_guard<std::mutex> lock(mu_);
  return streamed_;
}

uint64_t SnapshotStream::chunk_waits() const {
  std::lock_guard<std::mutex> lock(mu_);
  return waits_;
}

uint64_t SnapshotStream::WaitFor(uint64_t end) {
  std::unique_lock<std::mutex> lock(mu_);
  cv_.wait(lock, [&] { return published_ >= std::min(end, size()) || producer_error_; });
  if (producer_error_) std::rethrow_exception(producer_error_);
  return published_;
}

void SnapshotStream::Visit(uint64_t offset, uint64_t n,
                           const std::function<void(const void*, size_t)>& fn) const {
  const uint64_t end = offset + n;
  std::vector<std::pair<const uint8_t*, size_t>> pieces;
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (uint64_t at = offset; at < end;) {
      const size_t k = static_cast<size_t>(at / chunk_);
      const uint64_t in = at % chunk_;
      const uint64_t len = std::min(end - at, chunk_ - in);
      if (k >= chunks_.size() || chunks_[k] == nullptr || at + len > published_)
        throw Error::InvalidArgument("snapshot bytes read before they were published");
      pieces.emplace_back(chunks_[k]->data + in, static_cast<size_t>(len));
      at += len;
    }
  }
  // Published chunks stay put until this consumer releases them.
  for (const auto& p : pieces) fn(p.first, p.second);
}

void SnapshotStream::Release(uint64_t end) {
  std::vector<StagingChunk*> back;
  {
    std::lock_guard<std::mutex> lock(mu_);
    const size_t upto = end >= size()
                            ? chunks_.size()
                            : static_cast<size_t>(std::min<uint64_t>(end, published_) / chunk_);
    for (; released_ < upto; ++released_) {
      if (chunks_[released_] != nullptr) back.push_back(chunks_[released_]);
      chunks_[released_] = nullptr;
    }
  }
  for (StagingChunk* c : back) pool_->Release(c);
}

uint64_t SnapshotStream::capacity() const {
  const size_t chunks = pool_->budget_chunks();
  return chunks > 2 ? (chunks - 2) * chunk_ : 0;
}

void SnapshotStream::Abort(std::exception_ptr why) {
  std::vector<StagingChunk*> back;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (!consumer_error_) consumer_error_ = why;
    // Only published chunks: the producer may be filling the others.
    const size_t upto =
        published_ >= size() ? chunks_.size() : static_cast<size_t>(published_ / chunk_);
    for (size_t k = released_; k < upto; ++k) {
      if (chunks_[k] != nullptr) back.push_back(chunks_[k]);
      chunks_[k] = nullptr;
    }
    released_ = std::max(released_, upto);
  }
  for (StagingChunk* c : back) pool_->Release(c);
}

uint8_t* SnapshotStream::MutableByteForTesting(uint64_t offset) {
  std::lock_guard<std::mutex> lock(mu_);
  const size_t k = static_cast<size_t>(offset / chunk_);
  if (k >= chunks_.size() || chunks_[k] == nullptr || offset >= published_)
    throw Error::InvalidArgument("staged byte not held");
  return chunks_[k]->data + offset % chunk_;
}

// ---- hashing while copying -------------------------------------------------------

struct CopyHashes::Slot {
  std::unique_ptr<format::Xxh3Stream> state;  // created at the first block
  uint64_t hashed = 0;                        // tensor bytes [0, hashed) are in `state`
};

CopyHashes::CopyHashes(size_t tensors) : slots_(tensors) {}
CopyHashes::~CopyHashes() = default;

void CopyHashes::Copied(size_t i, uint64_t at, const uint8_t* p, size_t n) {
  Slot& s = slots_[i];
  if (at != s.hashed || n == 0) return;
  if (!s.state) s.state = std::make_unique<format::Xxh3Stream>();
  s.state->Update(p, n);
  s.hashed += n;
}

uint64_t CopyHashes::hashed(size_t i) const { return slots_[i].hashed; }

uint64_t CopyHashes::Finish(
    std::vector<format::FlatTensor>* tensors, const format::DataSource& source,
    const std::function<void(size_t, const std::function<void(size_t)>&)>& parallel_for) {
  std::vector<format::FlatTensor>& ts = *tensors;
  std::vector<size_t> rest;
  uint64_t late = 0;
  for (size_t i = 0; i < ts.size(); ++i) {
    if (slots_[i].hashed < ts[i].nbytes) {
      rest.push_back(i);
      late += ts[i].nbytes - slots_[i].hashed;
    } else if (slots_[i].state) {
      ts[i].xxh3 = slots_[i].state->Digest();
    } else {
      ts[i].xxh3 = format::Xxh3(nullptr, 0);
    }
  }
  parallel_for(rest.size(), [&](size_t j) {
    const size_t i = rest[j];
    Slot& s = slots_[i];
    if (!s.state) s.state = std::make_unique<format::Xxh3Stream>();
    source.Visit(ts[i].staging_offset + s.hashed, ts[i].nbytes - s.hashed,
                 [&](const void* p, size_t n) { s.state->Update(p, n); });
    s.hashed = ts[i].nbytes;
    ts[i].xxh3 = s.state->Digest();
  });
  return late;
}

// ---- hashing the sources -------------------------------------------------------

void HashSources(std::vector<format::FlatTensor>* tensors, uint8_t* bounce, uint64_t chunk_bytes,
                 TaskPool* pool) {
  std::vector<format::FlatTensor>& ts = *tensors;
  std::vector<size_t> plain, other;
  for (size_t i = 0; i < ts.size(); ++i) (PlainCpu(ts[i].tensor) ? plain : other).push_back(i);
  auto hash_plain = [&](size_t j) {
    format::FlatTensor& f = ts[plain[j]];
    f.xxh3 = format::Xxh3(f.nbytes ? f.tensor.data_ptr() : nullptr, static_cast<size_t>(f.nbytes));
  };
  if (pool != nullptr) {
    pool->ParallelFor(plain.size(), hash_plain);
  } else {
    for (size_t j = 0; j < plain.size(); ++j) hash_plain(j);
  }
  for (size_t i : other) {
    format::FlatTensor& f = ts[i];
    const int64_t es = static_cast<int64_t>(f.tensor.element_size());
    const int64_t per = std::max<int64_t>(1, static_cast<int64_t>(chunk_bytes) / es);
    const int64_t numel = f.tensor.numel();
    format::Xxh3Stream h;
    for (int64_t e = 0; e < numel; e += per) {
      const int64_t end = std::min(numel, e + per);
      CopyElements(f.tensor, e, end, bounce, /*non_blocking=*/false);
      h.Update(bounce, static_cast<size_t>((end - e) * es));
    }
    f.xxh3 = h.Digest();
  }
}

// ---- the copy --------------------------------------------------------------------

void CopySnapshot(std::vector<format::FlatTensor>* tensors, SnapshotStream* stream, TaskPool* pool,
                  const SnapshotPoint* point, size_t max_batch, CopyHashes* hashes) {
  // The snapshot never keeps the caller's tensors alive, whatever happens.
  struct DropSources {
    std::vector<format::FlatTensor>* t;
    ~DropSources() {
      for (auto& f : *t) f.tensor = at::Tensor();
    }
  } drop{tensors};
  const std::vector<format::FlatTensor>& ts = *tensors;
  const uint64_t total = stream->size();
  const uint64_t chunk = stream->chunk_bytes();
  const size_t workers = pool == nullptr ? 1 : static_cast<size_t>(pool->threads()) + 1;

  // Per device: a side stream that waits for the work that produced the state
  // (the event recorded at save() on the caller's stream: an overlapped copy
  // runs later, on another thread, whose current stream is not the
  // caller's), else for what is queued on the current stream now.
  struct DeviceCopy {
    c10::Device device;
    c10::Stream side;
  };
  std::vector<DeviceCopy> devices;
  for (const auto& f : ts) {
    const c10::Device d = f.tensor.device();
    if (d.is_cpu() || std::any_of(devices.begin(), devices.end(),
                                  [&](const DeviceCopy& x) { return x.device == d; }))
      continue;
    c10::impl::VirtualGuardImpl impl(d.type());
    c10::Stream side = impl.getStreamFromGlobalPool(d, /*isHighPriority=*/false);
    std::shared_ptr<c10::Event> ready;
    if (point != nullptr) {
      for (const auto& r : point->ready)
        if (r.first == d) ready = r.second;
    }
    if (!ready) {
      ready = std::make_shared<c10::Event>(d.type());
      ready->record(impl.getStream(d));
    }
    ready->block(side);
    devices.push_back({d, side});
  }

  size_t checked = 0;  // tensors [0, checked) passed their version check
  for (size_t first = 0; first < stream->num_chunks();) {
    const std::vector<uint8_t*> bases = stream->Take(first, max_batch);
    const uint64_t b = first * chunk;
    const uint64_t e = std::min(total, (first + bases.size()) * chunk);
    auto dst = [&](uint64_t offset) { return bases[offset / chunk - first] + offset % chunk; };
    // The pieces of [b, e): tensor i's bytes [lo, hi), split at chunk boundaries.
    struct Piece {
      size_t tensor;
      uint64_t lo, hi;  // in the data section
    };
    std::vector<Piece> contiguous, strided, device;
    uint64_t contiguous_bytes = 0;
    const auto start = std::upper_bound(ts.begin(), ts.end(), b, [](uint64_t off, const auto& t) {
      return off < t.staging_offset + t.nbytes;
    });
    for (auto it = start; it != ts.end() && it->staging_offset < e; ++it) {
      const size_t i = static_cast<size_t>(it - ts.begin());
      const uint64_t lo = std::max(b, it->staging_offset);
      const uint64_t hi = std::min(e, it->staging_offset + it->nbytes);
      if (lo >= hi) continue;
      if (PlainCpu(it->tensor)) {
        contiguous.push_back({i, lo, hi});
        contiguous_bytes += hi - lo;
        continue;
      }
      for (uint64_t at = lo; at < hi;) {
        const uint64_t to = std::min(hi, (at / chunk + 1) * chunk);
        (it->tensor.device().is_cpu() ? strided : device).push_back({i, at, to});
        at = to;
      }
    }

    // Device pieces: queued on the side streams first, so they run while the
    // CPU copies below do; one event per device and batch.
    std::vector<std::unique_ptr<c10::Event>> done;
    for (const auto& d : devices) {
      c10::StreamGuard guard(d.side);
      bool any = false;
      for (const Piece& p : device) {
        const format::FlatTensor& f = ts[p.tensor];
        if (f.tensor.device() != d.device) continue;
        const uint64_t es = f.tensor.element_size();
        CopyElements(f.tensor, static_cast<int64_t>((p.lo - f.staging_offset) / es),
                     static_cast<int64_t>((p.hi - f.staging_offset) / es), dst(p.lo),
                     /*non_blocking=*/true);
        any = true;
      }
      if (any) {
        done.push_back(std::make_unique<c10::Event>(d.device.type()));
        done.back()->record(d.side);
      }
    }

    // The contiguous bytes, taken as one sequence across tensors, are cut into
    // one contiguous range per copying thread. (Interleaving small pieces
    // between the threads instead was measured ~1.5x slower for 1 GiB on a
    // 2-vCPU VM: two threads streaming through adjacent blocks, against two
    // threads each streaming through its own half.)
    std::vector<uint64_t> starts(contiguous.size() + 1, 0);
    for (size_t k = 0; k < contiguous.size(); ++k)
      starts[k + 1] = starts[k] + contiguous[k].hi - contiguous[k].lo;
    const size_t ranges =
        contiguous_bytes == 0
            ? 0
            : static_cast<size_t>(std::clamp<uint64_t>(contiguous_bytes / kMinRange, 1, workers));
    // Each contiguous piece's tensor's hashed prefix before this batch: read
    // here, as the ranges that extend them run in parallel.
    std::vector<uint64_t> prefix;
    if (hashes != nullptr) {
      prefix.reserve(contiguous.size());
      for (const Piece& p : contiguous) prefix.push_back(hashes->hashed(p.tensor));
    }
    auto copy_range = [&](size_t r) {
      const uint64_t rb = contiguous_bytes * r / ranges;
      const uint64_t re = contiguous_bytes * (r + 1) / ranges;
      size_t k =
          static_cast<size_t>(std::upper_bound(starts.begin(), starts.end(), rb) - starts.begin()) -
          1;
      for (; k < contiguous.size() && starts[k] < re; ++k) {
        const Piece& p = contiguous[k];
        const format::FlatTensor& f = ts[p.tensor];
        const auto* src = static_cast<const uint8_t*>(f.tensor.data_ptr());
        // Data-section offsets of this range's part of the piece.
        uint64_t at = p.lo + (std::max(rb, starts[k]) - starts[k]);
        const uint64_t to = p.lo + (std::min(re, starts[k + 1]) - starts[k]);
        // Only the range whose part starts where the tensor's hashed prefix
        // ends hashes it.
        const bool hash = hashes != nullptr && prefix[k] == at - f.staging_offset;
        while (at < to) {
          uint64_t n = std::min(to, (at / chunk + 1) * chunk) - at;
          if (hash) n = std::min<uint64_t>(n, kHashBlock);
          std::memcpy(dst(at), src + (at - f.staging_offset), n);
          if (hash) hashes->Copied(p.tensor, at - f.staging_offset, dst(at), n);
          at += n;
        }
      }
    };
    auto run = [&](size_t k) {
      if (k < ranges) {
        copy_range(k);
      } else {
        const Piece& p = strided[k - ranges];
        const format::FlatTensor& f = ts[p.tensor];
        const uint64_t es = f.tensor.element_size();
        CopyElements(f.tensor, static_cast<int64_t>((p.lo - f.staging_offset) / es),
                     static_cast<int64_t>((p.hi - f.staging_offset) / es), dst(p.lo),
                     /*non_blocking=*/false);
      }
    };
    const size_t tasks = ranges + strided.size();
    if (pool == nullptr || tasks < 2) {
      for (size_t k = 0; k < tasks; ++k) run(k);
    } else {
      pool->ParallelFor(tasks, run);
    }
    for (const auto& ev : done) WaitForEvent(*ev);

    // Every tensor whose last byte is now copied must be unchanged since
    // save(): a tensor modified in between makes the copy worthless. Checked
    // before its last byte is published, so the writer never commits it.
    for (; checked < ts.size() && ts[checked].staging_offset + ts[checked].nbytes <= e; ++checked) {
      if (point != nullptr && checked < point->versions.size())
        CheckVersion(ts[checked], point->versions[checked]);
    }
    stream->Publish(e);
    first += bases.size();
  }
  // Tensors with no bytes past the last chunk (or a state of no bytes at all).
  for (; checked < ts.size(); ++checked) {
    if (point != nullptr && checked < point->versions.size())
      CheckVersion(ts[checked], point->versions[checked]);
  }
  stream->Publish(total);
}

}  // namespace engine
}  // namespace ackpt
