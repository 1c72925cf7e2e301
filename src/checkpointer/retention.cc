// Retention rules: which checkpoints of a catalog to keep, and the order they rank in.
#include "ackpt/retention.h"

#include <algorithm>
#include <cmath>
#include <map>

namespace ackpt {

void SortNewestFirst(std::vector<CheckpointEntry>* entries) {
  auto& all = *entries;
  // Most recently committed first; files without lineage (generation 0) by index.
  std::sort(all.begin(), all.end(), [](const CheckpointEntry& a, const CheckpointEntry& b) {
    if (a.generation != b.generation) return a.generation > b.generation;
    return a.index != b.index ? a.index > b.index : a.path > b.path;
  });
  // The head is the first readable entry; its ancestors move up to follow it
  // (entries ranked before the head, unreadable ones, keep their place).
  auto head =
      std::find_if(all.begin(), all.end(), [](const CheckpointEntry& e) { return e.readable; });
  if (head == all.end()) return;
  std::map<int64_t, size_t> by_index;
  for (size_t i = 0; i < all.size(); ++i) by_index.emplace(all[i].index, i);  // most recent wins
  std::vector<size_t> chain;
  std::vector<bool> in_chain(all.size(), false);
  for (size_t cur = static_cast<size_t>(head - all.begin()); !in_chain[cur];) {
    in_chain[cur] = true;
    chain.push_back(cur);
    const CheckpointEntry& e = all[cur];
    auto p = by_index.find(e.parent);
    if (e.parent < 0 || p == by_index.end() || !all[p->second].readable) break;
    // A "parent" committed after its child is another run that reused the index.
    if (e.generation != 0 && all[p->second].generation > e.generation) break;
    cur = p->second;
  }
  std::vector<CheckpointEntry> ordered;
  ordered.reserve(all.size());
  const size_t h = static_cast<size_t>(head - all.begin());
  for (size_t i = 0; i < h; ++i) ordered.push_back(std::move(all[i]));
  for (size_t i : chain) ordered.push_back(std::move(all[i]));
  for (size_t i = h; i < all.size(); ++i) {
    if (!in_chain[i]) ordered.push_back(std::move(all[i]));
  }
  all = std::move(ordered);
}

namespace {

bool References(const CheckpointEntry& e, const std::string& file) {
  return std::find(e.references.begin(), e.references.end(), file) != e.references.end();
}

// Incremental checkpoints: a kept checkpoint keeps the files its references
// name ("base"), and a kept base keeps its own.
void KeepBases(std::vector<CheckpointEntry>* all) {
  std::map<std::string, size_t> by_file;
  for (size_t i = 0; i < all->size(); ++i) {
    for (const auto& f : (*all)[i].files()) by_file.emplace(f, i);
  }
  std::vector<size_t> work;
  for (size_t i = 0; i < all->size(); ++i) {
    if (!(*all)[i].kept_by.empty()) work.push_back(i);
  }
  while (!work.empty()) {
    const size_t i = work.back();
    work.pop_back();
    for (const auto& f : (*all)[i].references) {
      auto it = by_file.find(f);
      if (it == by_file.end()) continue;
      CheckpointEntry& base = (*all)[it->second];
      if (std::find(base.kept_by.begin(), base.kept_by.end(), "base") != base.kept_by.end())
        continue;
      const bool was_kept = !base.kept_by.empty();
      base.kept_by.push_back("base");
      if (!was_kept) work.push_back(it->second);
    }
  }
}

// Deletion order: a checkpoint before the bases it references, so a crash
// between two deletions never leaves a reference to a deleted file.
std::vector<CheckpointEntry> DependentsFirst(std::vector<CheckpointEntry> doomed) {
  std::vector<CheckpointEntry> out;
  out.reserve(doomed.size());
  while (!doomed.empty()) {
    bool progressed = false;
    for (size_t i = 0; i < doomed.size();) {
      bool referenced = false;
      for (const auto& f : doomed[i].files()) {
        for (size_t j = 0; j < doomed.size() && !referenced; ++j)
          referenced = j != i && References(doomed[j], f);
      }
      if (referenced) {
        ++i;
        continue;
      }
      out.push_back(std::move(doomed[i]));
      doomed.erase(doomed.begin() + static_cast<std::ptrdiff_t>(i));
      progressed = true;
    }
    if (!progressed) {  // a cycle cannot be written; delete the rest in order
      for (auto& e : doomed) out.push_back(std::move(e));
      break;
    }
  }
  return out;
}

}  // namespace

std::vector<CheckpointEntry> EvaluateRetention(std::vector<CheckpointEntry>* entries,
                                               const RetentionPolicy& p) {
  auto& all = *entries;
  for (auto& e : all) e.kept_by.clear();
  SortNewestFirst(entries);
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
    std::vector<CheckpointEntry*> by_time(readable.rbegin(), readable.rend());
    std::stable_sort(by_time.begin(), by_time.end(),
                     [](const CheckpointEntry* a, const CheckpointEntry* b) {
                       return a->save_time < b->save_time;
                     });
    for (auto it = by_time.begin(); it != by_time.end(); ++it) {  // oldest first
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
  KeepBases(&all);
  std::vector<CheckpointEntry> doomed;
  for (auto& e : all) {
    if (e.kept_by.empty()) doomed.push_back(e);
  }
  return DependentsFirst(std::move(doomed));
}

}  // namespace ackpt
