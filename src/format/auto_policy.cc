// kAuto's choice per data frame and the model behind it (format/auto_policy.h).
#include "format/auto_policy.h"

#include <algorithm>
#include <chrono>
#include <cmath>

#include "format/parallel.h"

namespace ackpt {
namespace format {
namespace codec {

namespace {

using Clock = std::chrono::steady_clock;

void Blend(double* avg, double sample) {
  if (!(sample > 0) || !std::isfinite(sample)) return;
  *avg = *avg > 0 ? 0.8 * *avg + 0.2 * sample : sample;
}

double Since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

// A sample of the frame for kAuto: up to 4 slices of 16 KiB, each cut at
// element boundaries of the frame's segments, kept with their segments.
struct Sample {
  std::vector<uint8_t> bytes;
  std::vector<Segment> segments;
};

Sample TakeSample(const uint8_t* src, size_t n, const std::vector<Segment>& segments) {
  Sample s;
  constexpr size_t kSlice = 16 << 10, kSlices = 4;
  if (n <= kSlice * kSlices) {
    s.bytes.assign(src, src + n);
    s.segments = segments;
    return s;
  }
  for (size_t i = 0; i < kSlices; ++i) {
    const size_t start = (n - kSlice) * i / (kSlices - 1) / 8 * 8;
    // Segments overlapping [start, start + kSlice), phase-aligned to elements.
    uint64_t pos = 0;
    for (const auto& seg : segments) {
      const uint64_t b = std::max<uint64_t>(pos, start),
                     e = std::min<uint64_t>(pos + seg.size, start + kSlice);
      if (b < e) {
        const uint32_t k = seg.elem_size;
        const uint64_t skip = (k - (b - pos) % k) % k;  // to the next element start
        if (b + skip < e) {
          s.bytes.insert(s.bytes.end(), src + b + skip, src + e);
          s.segments.push_back({e - b - skip, k});
        }
      }
      pos += seg.size;
      if (pos >= start + kSlice) break;
    }
  }
  return s;
}

}  // namespace

AutoChoice Decide(const AutoEstimate& e, AutoCandidates candidates) {
  const double d = e.disk_bytes_per_s;
  if (!(d > 0)) return AutoChoice::kStore;
  // Seconds per input byte: CPU spent compressing against device time saved.
  auto pays = [&](double ratio, double speed) {
    return speed > 0 && ratio > 1 && 1.0 / speed <= (1.0 - 1.0 / ratio) / d;
  };
  AutoChoice best = AutoChoice::kStore;
  double best_ratio = 1.0;
  if (pays(e.zstd_ratio, e.zstd_bytes_per_s) && e.zstd_ratio > best_ratio) {
    best = AutoChoice::kZstd;
    best_ratio = e.zstd_ratio;
  }
  if (candidates == AutoCandidates::kStoreZstdGrouped &&
      pays(e.grouped_ratio, e.grouped_bytes_per_s) && e.grouped_ratio > best_ratio) {
    best = AutoChoice::kGrouped;
  }
  return best;
}

uint32_t AutoModel::EncodeFrame(const uint8_t* src, size_t n, const std::vector<Segment>& segments,
                                const WriteOptions& options, std::string* out,
                                AutoCandidates candidates) {
  const bool grouped = candidates == AutoCandidates::kStoreZstdGrouped;
  // Estimate both codecs on a sample of this frame; speeds from the frames
  // encoded so far (the sample's own timing the first time).
  AutoEstimate e;
  {
    std::lock_guard<std::mutex> lock(mu_);
    e.disk_bytes_per_s = forced_disk_ > 0 ? forced_disk_ : disk_;
    e.zstd_bytes_per_s = zstd_;
    e.grouped_bytes_per_s = grouped_;
  }
  e.threads = ResolveThreads(options.writer_threads);
  AutoChoice choice = grouped ? AutoChoice::kStore : AutoChoice::kZstd;
  if (e.disk_bytes_per_s > 0) {
    const Sample s = TakeSample(src, n, segments);
    std::string tmp;
    auto t0 = Clock::now();
    EncodeZstdFrame(s.bytes.data(), s.bytes.size(), options.zstd_level, &tmp);
    const size_t zr = tmp.size();
    const double zt = Since(t0);
    const double len = static_cast<double>(s.bytes.size());
    e.zstd_ratio = len / static_cast<double>(std::max<size_t>(zr, 1));
    if (!(e.zstd_bytes_per_s > 0)) e.zstd_bytes_per_s = len / std::max(zt, 1e-9);
    if (grouped) {
      t0 = Clock::now();
      EncodeByteGroupedDataFrame(s.bytes.data(), s.bytes.size(), s.segments, options.zstd_level,
                                 &tmp);
      const double gt = Since(t0);
      e.grouped_ratio = len / static_cast<double>(std::max<size_t>(tmp.size(), 1));
      if (!(e.grouped_bytes_per_s > 0)) e.grouped_bytes_per_s = len / std::max(gt, 1e-9);
    }
    choice = Decide(e, candidates);
  }
  const auto t0 = Clock::now();
  uint32_t sum;
  switch (choice) {
    case AutoChoice::kStore:
      sum = EncodeStoredFrame(src, n, out);
      break;
    case AutoChoice::kZstd:
      sum = EncodeZstdFrame(src, n, options.zstd_level, out);
      break;
    default:
      sum = EncodeByteGroupedDataFrame(src, n, segments, options.zstd_level, out);
      break;
  }
  const double took = Since(t0);
  std::lock_guard<std::mutex> lock(mu_);
  if (choice == AutoChoice::kZstd) Blend(&zstd_, n / std::max(took, 1e-9));
  if (choice == AutoChoice::kGrouped) Blend(&grouped_, n / std::max(took, 1e-9));
  last_ = e;
  last_choice_ = choice;
  return sum;
}

void AutoModel::RecordSave(const WriteOptions& options, uint64_t file_bytes, double write_seconds,
                           double compress_seconds) {
  if (options.compression == Compression::kNone && !options.fsync) return;
  // Time not spent compressing (compress time is summed over threads) is
  // time spent writing and syncing: a lower bound on the device's speed.
  const double threads = ResolveThreads(options.writer_threads);
  const double io = write_seconds - compress_seconds / threads;
  if (file_bytes < (1u << 20) || !(io > 1e-4)) return;  // too small to tell
  std::lock_guard<std::mutex> lock(mu_);
  Blend(&disk_, static_cast<double>(file_bytes) / io);
}

void AutoModel::SetDiskSpeedForTesting(double bytes_per_s) {
  std::lock_guard<std::mutex> lock(mu_);
  forced_disk_ = bytes_per_s;
}

AutoEstimate AutoModel::LastEstimateForTesting(AutoChoice* choice) const {
  std::lock_guard<std::mutex> lock(mu_);
  if (choice) *choice = last_choice_;
  return last_;
}

AutoModel& DefaultAutoModel() {
  static AutoModel* m = new AutoModel();  // never destroyed: see the header
  return *m;
}

}  // namespace codec
}  // namespace format
}  // namespace ackpt
