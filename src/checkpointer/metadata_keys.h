// The checkpointer's own __metadata__ entries (docs/FORMAT.md).
#pragma once

#include <map>
#include <string>

#include "ackpt/retention.h"

namespace ackpt {

inline constexpr const char* kMetaKind = "ackpt.kind";    // "checkpoint" | "model"
inline constexpr const char* kMetaIndex = "ackpt.index";  // decimal
inline constexpr const char* kMetaTime = "ackpt.time";    // save() wall time, seconds since epoch
inline constexpr const char* kMetaMetrics = "ackpt.metrics";  // JSON object name -> number|null
inline constexpr const char* kMetaRetention =
    "ackpt.retention";  // JSON of the RetentionPolicy in force

std::string EncodeMetrics(const std::map<std::string, double>& metrics);
// Unparseable or non-numeric entries are dropped; null reads as NaN.
std::map<std::string, double> ParseMetrics(const std::map<std::string, std::string>& metadata);
double ParseSaveTime(const std::map<std::string, std::string>& metadata);  // 0 if absent
std::string EncodeRetention(const RetentionPolicy& policy);
// Returns false if absent or malformed.
bool ParseRetention(const std::map<std::string, std::string>& metadata, RetentionPolicy* policy);

}  // namespace ackpt
