// Compression::kAuto (docs/FORMAT.md 14.5): per data frame, stored, zstd or
// byte-grouped, chosen from a sample of the frame and a model of this
// machine's compression and write speeds. The model has an owner: each
// engine holds its own (two checkpointers writing to different disks each
// measure theirs), and the synchronous writer uses DefaultAutoModel().
#pragma once

#include <cstddef>
#include <cstdint>
#include <mutex>
#include <string>
#include <vector>

#include "ackpt/format.h"
#include "format/codec.h"

namespace ackpt {
namespace format {
namespace codec {

// What kAuto chose for a frame, and the estimate behind it.
enum class AutoChoice { kStore, kZstd, kGrouped };
// The encodings a frame may get: kAuto's three, or kZstd's two (a stored
// frame is a zstd frame of raw blocks, so a kZstd file stays version 2 and
// readable by any zstd decoder).
enum class AutoCandidates { kStoreZstdGrouped, kStoreZstd };
struct AutoEstimate {
  double disk_bytes_per_s = 0;               // measured (or assumed) write speed of the file system
  double threads = 1;                        // compressing in parallel
  double zstd_ratio = 1, grouped_ratio = 1;  // on the frame's sample
  double zstd_bytes_per_s = 0, grouped_bytes_per_s = 0;  // per thread
};
// The decision rule: the smallest estimated output among the choices whose
// CPU time (compressing on one thread: the writers take it from the trainer)
// is repaid by the device time the smaller output saves; storing when
// nothing qualifies. A choice that qualifies also persists no later than
// storing would on any number of threads. kStoreZstd ignores the grouped
// estimate.
AutoChoice Decide(const AutoEstimate& e,
                  AutoCandidates candidates = AutoCandidates::kStoreZstdGrouped);

// kAuto's model: the write speed of the file system, measured after each
// save, and the per-thread compression speeds of zstd and byte grouping,
// measured on every frame it encodes (exponential averages). Thread-safe:
// a save's writer threads encode frames at once.
class AutoModel {
 public:
  // Encodes data frame src[0, n) (cut into `segments`) as kAuto chooses:
  // the candidate codecs are tried on a sample of the frame (speeds from the
  // frames encoded so far, the sample's own timing the first time), Decide
  // picks, and the chosen encoding's measured speed is folded in. Before a
  // disk speed is known kAuto stores and kZstd (kStoreZstd) compresses, as
  // it did before it adapted. Returns the frame's checksum (what the seek
  // table records).
  uint32_t EncodeFrame(const uint8_t* src, size_t n, const std::vector<Segment>& segments,
                       const WriteOptions& options, std::string* out,
                       AutoCandidates candidates = AutoCandidates::kStoreZstdGrouped);
  // After a save: feeds its measured write speed to the model.
  void RecordSave(const WriteOptions& options, uint64_t file_bytes, double write_seconds,
                  double compress_seconds);

  // Test hooks: the disk speed assumed (0 = measure, the default), and the
  // last frame's estimate and choice.
  void SetDiskSpeedForTesting(double bytes_per_s);
  AutoEstimate LastEstimateForTesting(AutoChoice* choice) const;

 private:
  mutable std::mutex mu_;
  double disk_ = 0;                // bytes/s; 0 until a save was measured
  double zstd_ = 0, grouped_ = 0;  // bytes/s per thread; 0 until a frame was
  double forced_disk_ = 0;         // SetDiskSpeedForTesting
  AutoEstimate last_;
  AutoChoice last_choice_ = AutoChoice::kStore;
};

// The model of saves that no engine makes: WriteStateDict and every other
// caller of WriteStateDictSync. Process-wide by design: each such call
// writes one file, so a model per call would never learn a disk speed (and
// kAuto would always store). Never destroyed: a thread writing through it
// may outlive static destruction.
AutoModel& DefaultAutoModel();

}  // namespace codec
}  // namespace format
}  // namespace ackpt
