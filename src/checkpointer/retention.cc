// Retention rules and the on-disk listing they run on.
#include "ackpt/retention.h"

#include <algorithm>
#include <cmath>
#include <nlohmann/json.hpp>
#include <set>

#include "ackpt/error.h"
#include "ackpt/file_names.h"
#include "ackpt/format.h"
#include "checkpointer/metadata_keys.h"

namespace ackpt {

std::vector<CheckpointEntry> ListCheckpointEntries(Env* env, const std::string& dir,
                                                   const std::string& prefix,
                                                   const std::string& ext) {
  std::vector<CheckpointEntry> out;
  const std::vector<std::string> names = GetChildrenIfExists(env, dir);
  for (const auto& name : names) {
    auto index = ParseCheckpointIndex(name, prefix, ext);
    if (!index) continue;
    CheckpointEntry e;
    e.index = *index;
    e.path = JoinPath(dir, name);
    try {
      ReadOptions ro;
      ro.threads = 1;
      auto reader = CheckpointReader::Open(e.path, ro, env);
      const FileInfo& info = reader->info();
      e.file_bytes = info.file_bytes;
      e.logical_bytes = info.logical_bytes;
      e.save_time = ParseSaveTime(info.metadata);
      e.metrics = ParseMetrics(info.metadata);
    } catch (const Error& err) {
      if (err.code() == Error::Code::kNotFound) continue;  // deleted meanwhile
      e.readable = false;
      e.error = err.message();
    }
    if (e.save_time == 0) {
      try {
        e.save_time = env->GetFileMTime(e.path);
        if (e.file_bytes == 0) e.file_bytes = env->GetFileSize(e.path);
      } catch (const Error&) {
      }
    }
    out.push_back(std::move(e));
  }
  std::sort(out.begin(), out.end(), [](const CheckpointEntry& a, const CheckpointEntry& b) {
    return a.index != b.index ? a.index > b.index : a.path > b.path;
  });
  return out;
}

std::vector<CheckpointEntry> EvaluateRetention(std::vector<CheckpointEntry>* entries,
                                               const RetentionPolicy& p) {
  auto& all = *entries;
  for (auto& e : all) e.kept_by.clear();
  // Newest first (ListCheckpointEntries' order); make sure of it.
  std::stable_sort(all.begin(), all.end(), [](const CheckpointEntry& a, const CheckpointEntry& b) {
    return a.index > b.index;
  });
  std::vector<CheckpointEntry*> readable;
  for (auto& e : all) {
    if (!e.readable) {
      e.kept_by.push_back("unreadable");
    } else {
      readable.push_back(&e);
    }
  }
  if (!readable.empty()) readable.front()->kept_by.push_back("newest");
  if (!p.any_rule()) {
    for (auto* e : readable) e->kept_by.push_back("all");
  }
  if (p.keep_last > 0) {
    for (size_t i = 0; i < readable.size() && i < static_cast<size_t>(p.keep_last); ++i) {
      readable[i]->kept_by.push_back("keep_last");
    }
  }
  if (p.keep_every > 0) {
    for (auto* e : readable) {
      if (e->index % p.keep_every == 0) e->kept_by.push_back("keep_every");
    }
  }
  if (p.keep_best > 0) {
    std::vector<CheckpointEntry*> ranked;
    for (auto* e : readable) {
      auto m = e->metrics.find(p.best_metric);
      if (m != e->metrics.end() && !std::isnan(m->second)) ranked.push_back(e);
    }
    // Ties go to the newer checkpoint.
    std::stable_sort(
        ranked.begin(), ranked.end(), [&](const CheckpointEntry* a, const CheckpointEntry* b) {
          const double x = a->metrics.at(p.best_metric), y = b->metrics.at(p.best_metric);
          return p.best_mode_max ? x > y : x < y;
        });
    for (size_t i = 0; i < ranked.size() && i < static_cast<size_t>(p.keep_best); ++i) {
      ranked[i]->kept_by.push_back("keep_best");
    }
  }
  if (p.keep_time_interval_seconds > 0) {
    bool have = false;
    double last = 0;
    for (auto it = readable.rbegin(); it != readable.rend(); ++it) {  // oldest first
      if (!have || (*it)->save_time >= last + p.keep_time_interval_seconds) {
        (*it)->kept_by.push_back("keep_time_interval");
        last = (*it)->save_time;
        have = true;
      }
    }
  }
  if (p.max_total_bytes > 0) {
    uint64_t total = 0;
    for (size_t i = 0; i < readable.size(); ++i) {
      total += readable[i]->file_bytes;
      if (i > 0 && total > p.max_total_bytes) break;
      readable[i]->kept_by.push_back("max_total_bytes");
    }
  }
  std::vector<CheckpointEntry> doomed;
  for (auto& e : all) {
    if (e.kept_by.empty()) doomed.push_back(e);
  }
  return doomed;
}

}  // namespace ackpt
