#include "checkpointer/metadata_keys.h"

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <nlohmann/json.hpp>

namespace ackpt {

using json = nlohmann::json;

std::string EncodeMetrics(const std::map<std::string, double>& metrics) {
  json j = json::object();
  for (const auto& kv : metrics) {
    if (std::isfinite(kv.second)) {
      j[kv.first] = kv.second;
    } else {
      j[kv.first] = nullptr;  // JSON has no NaN/inf
    }
  }
  return j.dump();
}

const char* KindName(FileKind kind) {
  switch (kind) {
    case FileKind::kCheckpoint:
      return "checkpoint";
    case FileKind::kModel:
      return "model";
    case FileKind::kPart:
      return "part";
  }
  return "checkpoint";
}

double WallTimeNow() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}

std::map<std::string, std::string> BaseMetadata(FileKind kind, int64_t index,
                                                const std::map<std::string, double>& metrics) {
  char time[64];
  std::snprintf(time, sizeof time, "%.6f", WallTimeNow());
  std::map<std::string, std::string> m{
      {kMetaKind, KindName(kind)}, {kMetaIndex, std::to_string(index)}, {kMetaTime, time}};
  if (!metrics.empty()) m[kMetaMetrics] = EncodeMetrics(metrics);
  return m;
}

std::map<std::string, double> ParseMetricsJson(const std::string& text) {
  std::map<std::string, double> out;
  json j = json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (!j.is_object()) return out;
  for (auto m = j.begin(); m != j.end(); ++m) {
    if (m.value().is_number()) {
      out[m.key()] = m.value().get<double>();
    } else if (m.value().is_null()) {
      out[m.key()] = std::numeric_limits<double>::quiet_NaN();
    }
  }
  return out;
}

std::map<std::string, double> ParseMetrics(const std::map<std::string, std::string>& metadata) {
  auto it = metadata.find(kMetaMetrics);
  if (it == metadata.end()) return {};
  return ParseMetricsJson(it->second);
}

double ParseSaveTime(const std::map<std::string, std::string>& metadata) {
  auto it = metadata.find(kMetaTime);
  if (it == metadata.end()) return 0;
  char* end = nullptr;
  double t = std::strtod(it->second.c_str(), &end);
  return (end != nullptr && *end == '\0' && std::isfinite(t)) ? t : 0;
}

std::string EncodeRetention(const RetentionPolicy& p) {
  json j = json::object();
  if (p.keep_last > 0) j["keep_last"] = p.keep_last;
  if (p.keep_every > 0) j["keep_every"] = p.keep_every;
  if (p.keep_best > 0) {
    j["keep_best"] = p.keep_best;
    j["best_metric"] = p.best_metric;
    j["best_mode"] = p.best_mode_max ? "max" : "min";
  }
  if (p.keep_time_interval_seconds > 0)
    j["keep_time_interval_seconds"] = p.keep_time_interval_seconds;
  if (p.max_total_bytes > 0) j["max_total_bytes"] = p.max_total_bytes;
  if (p.model_keep_last > 0) j["model_keep_last"] = p.model_keep_last;
  return j.dump();
}

bool ParseRetention(const std::map<std::string, std::string>& metadata, RetentionPolicy* p) {
  auto it = metadata.find(kMetaRetention);
  if (it == metadata.end()) return false;
  json j = json::parse(it->second, nullptr, /*allow_exceptions=*/false);
  if (!j.is_object()) return false;
  try {
    RetentionPolicy r;
    r.keep_last = j.value("keep_last", int64_t{0});
    r.keep_every = j.value("keep_every", int64_t{0});
    r.keep_best = j.value("keep_best", int64_t{0});
    r.best_metric = j.value("best_metric", std::string());
    r.best_mode_max = j.value("best_mode", std::string("min")) == "max";
    r.keep_time_interval_seconds = j.value("keep_time_interval_seconds", 0.0);
    r.max_total_bytes = j.value("max_total_bytes", uint64_t{0});
    r.model_keep_last = j.value("model_keep_last", int64_t{0});
    *p = r;
    return true;
  } catch (const json::exception&) {
    return false;
  }
}

int64_t ParseIndexEntry(const std::map<std::string, std::string>& metadata, const char* key,
                        int64_t fallback) {
  auto it = metadata.find(key);
  if (it == metadata.end() || it->second.empty() || it->second.size() > 18) return fallback;
  for (char c : it->second) {
    if (c < '0' || c > '9') return fallback;
  }
  return static_cast<int64_t>(std::stoll(it->second));
}

}  // namespace ackpt
