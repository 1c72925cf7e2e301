// The checkpointer's own __metadata__ entries (docs/FORMAT.md): part of the
// CheckpointDir unit (checkpoint_dir.h), the only code that reads or writes them.
#pragma once

#include <map>
#include <string>

#include "ackpt/retention.h"

namespace ackpt {

// What a file holds; its ackpt.kind entry names it.
enum class FileKind {
  kCheckpoint,  // a full Checkpoint ("checkpoint")
  kModel,       // save_model()'s model state ("model")
  kPart,        // one rank's part of a distributed checkpoint ("part")
};
const char* KindName(FileKind kind);

inline constexpr const char* kMetaKind = "ackpt.kind";    // KindName(FileKind)
inline constexpr const char* kMetaIndex = "ackpt.index";  // decimal
inline constexpr const char* kMetaTime = "ackpt.time";    // save() wall time, seconds since epoch
inline constexpr const char* kMetaMetrics = "ackpt.metrics";  // JSON object name -> number|null
inline constexpr const char* kMetaRetention =
    "ackpt.retention";  // JSON of the RetentionPolicy in force
inline constexpr const char* kMetaParent = "ackpt.parent";  // decimal index; absent: none
inline constexpr const char* kMetaGeneration = "ackpt.generation";  // decimal, >= 1
inline constexpr const char* kMetaRank = "ackpt.rank";              // part files: decimal
inline constexpr const char* kMetaWorldSize = "ackpt.world_size";   // part files: decimal

// JSON object name -> number, non-finite values as null (JSON has no NaN).
std::string EncodeMetrics(const std::map<std::string, double>& metrics);
// kind, index, the save time now, and the metrics if any.
std::map<std::string, std::string> BaseMetadata(FileKind kind, int64_t index,
                                                const std::map<std::string, double>& metrics);
// Seconds since the epoch, now (what ackpt.time and manifests record).
double WallTimeNow();
// Unparseable or non-numeric entries are dropped; null reads as NaN.
std::map<std::string, double> ParseMetrics(const std::map<std::string, std::string>& metadata);
// The same for EncodeMetrics' JSON text itself (manifests store it).
std::map<std::string, double> ParseMetricsJson(const std::string& text);
double ParseSaveTime(const std::map<std::string, std::string>& metadata);  // 0 if absent
std::string EncodeRetention(const RetentionPolicy& policy);
// Returns false if absent or malformed.
bool ParseRetention(const std::map<std::string, std::string>& metadata, RetentionPolicy* policy);
// A non-negative decimal int64 entry, or `fallback` if absent or malformed.
int64_t ParseIndexEntry(const std::map<std::string, std::string>& metadata, const char* key,
                        int64_t fallback);

}  // namespace ackpt
