// The checkpoint file-name scheme (docs/FORMAT.md, "File names").
#include "ackpt/file_names.h"

#include <cctype>
#include <limits>

#include "ackpt/env.h"
#include "ackpt/error.h"

namespace ackpt {

namespace {

bool AllDigits(const std::string& s, size_t begin, size_t end) {
  if (begin >= end) return false;
  for (size_t i = begin; i < end; ++i) {
    if (!std::isdigit(static_cast<unsigned char>(s[i]))) return false;
  }
  return true;
}

bool EndsWith(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() &&
         s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

}  // namespace

std::string CheckpointFileName(const std::string& prefix, int64_t index, bool compressed,
                               const std::string& ext) {
  if (prefix.empty() || prefix.find('/') != std::string::npos) {
    throw Error::InvalidArgument("file prefix '" + prefix +
                                 "' must be non-empty and contain no '/'");
  }
  if (ext.empty() || ext.find('/') != std::string::npos) {
    throw Error::InvalidArgument("file extension '" + ext +
                                 "' must be non-empty and contain no '/'");
  }
  if (index < 0)
    throw Error::InvalidArgument("checkpoint index " + std::to_string(index) + " is negative");
  return prefix + "_" + std::to_string(index) + "." + ext + (compressed ? ".zst" : "");
}

std::string ModelFilePrefix(const std::string& prefix) { return prefix + "_model"; }

std::optional<int64_t> ParseCheckpointIndex(const std::string& file_name, const std::string& prefix,
                                            const std::string& ext) {
  const std::string name = BaseName(file_name);
  const std::string plain = "." + ext;
  const std::string zst = plain + ".zst";
  std::string stem;
  if (EndsWith(name, zst)) {
    stem = name.substr(0, name.size() - zst.size());
  } else if (EndsWith(name, plain)) {
    stem = name.substr(0, name.size() - plain.size());
  } else {
    return std::nullopt;
  }
  const std::string head = prefix + "_";
  if (stem.size() <= head.size() || stem.compare(0, head.size(), head) != 0) return std::nullopt;
  if (!AllDigits(stem, head.size(), stem.size())) return std::nullopt;
  const std::string digits = stem.substr(head.size());
  if (digits.size() > 1 && digits[0] == '0') return std::nullopt;
  if (digits.size() > 19) return std::nullopt;
  unsigned long long v = std::stoull(digits);
  if (v > static_cast<unsigned long long>(std::numeric_limits<int64_t>::max())) return std::nullopt;
  return static_cast<int64_t>(v);
}

namespace {

// The index of "{prefix}_{digits}" exactly (the rules of ParseCheckpointIndex).
std::optional<int64_t> ParseStem(const std::string& stem, const std::string& prefix) {
  const std::string head = prefix + "_";
  if (stem.size() <= head.size() || stem.compare(0, head.size(), head) != 0) return std::nullopt;
  if (!AllDigits(stem, head.size(), stem.size())) return std::nullopt;
  const std::string digits = stem.substr(head.size());
  if ((digits.size() > 1 && digits[0] == '0') || digits.size() > 19) return std::nullopt;
  unsigned long long v = std::stoull(digits);
  if (v > static_cast<unsigned long long>(std::numeric_limits<int64_t>::max())) return std::nullopt;
  return static_cast<int64_t>(v);
}

}  // namespace

std::string PartFileName(const std::string& prefix, int64_t index, int rank, bool compressed,
                         const std::string& ext) {
  if (rank < 0) throw Error::InvalidArgument("rank " + std::to_string(rank) + " is negative");
  // Validates prefix, ext and index.
  CheckpointFileName(prefix, index, compressed, ext);
  return prefix + "_" + std::to_string(index) + ".rank" + std::to_string(rank) + "." + ext +
         (compressed ? ".zst" : "");
}

std::optional<std::pair<int64_t, int>> ParsePartFileName(const std::string& file_name,
                                                         const std::string& prefix,
                                                         const std::string& ext) {
  std::string name = BaseName(file_name);
  const std::string plain = "." + ext;
  if (EndsWith(name, plain + ".zst")) {
    name.resize(name.size() - plain.size() - 4);
  } else if (EndsWith(name, plain)) {
    name.resize(name.size() - plain.size());
  } else {
    return std::nullopt;
  }
  const size_t dot = name.rfind(".rank");
  if (dot == std::string::npos || !AllDigits(name, dot + 5, name.size())) return std::nullopt;
  const std::string rank = name.substr(dot + 5);
  if ((rank.size() > 1 && rank[0] == '0') || rank.size() > 9) return std::nullopt;
  auto index = ParseStem(name.substr(0, dot), prefix);
  if (!index) return std::nullopt;
  return std::make_pair(*index, std::stoi(rank));
}

std::string ManifestFileName(const std::string& prefix, int64_t index) {
  CheckpointFileName(prefix, index, false, "manifest.json");  // validates
  return prefix + "_" + std::to_string(index) + ".manifest.json";
}

std::optional<int64_t> ParseManifestIndex(const std::string& file_name, const std::string& prefix) {
  const std::string name = BaseName(file_name);
  const std::string suffix = ".manifest.json";
  if (!EndsWith(name, suffix)) return std::nullopt;
  return ParseStem(name.substr(0, name.size() - suffix.size()), prefix);
}

}  // namespace ackpt
