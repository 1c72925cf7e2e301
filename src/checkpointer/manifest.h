// The manifest of a distributed checkpoint, "{prefix}_{index}.manifest.json"
// (docs/DISTRIBUTED.md): which part file each rank committed, and the
// lineage and metrics of the checkpoint. A distributed checkpoint exists iff
// its manifest does. The one place that knows the manifest's JSON.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "ackpt/env.h"
#include "ackpt/retention.h"

namespace ackpt {

struct Manifest {
  int64_t index = 0;
  int world_size = 0;
  double time = 0;  // commit wall time, seconds since the epoch
  uint64_t generation = 0;
  int64_t parent = -1;
  std::map<std::string, double> metrics;
  std::vector<std::string> replicated;  // the replicated paths in force at save()
  struct Part {
    std::string file;  // in the manifest's directory
    uint64_t file_bytes = 0;
    std::string header_xxh3;
    bool has_local = false;  // holds rank-local state
  };
  std::vector<Part> parts;  // by rank

  bool any_local() const;
};

// One rank's part as it publishes it (a JSON object).
std::string EncodePart(const Manifest::Part& part);
Manifest::Part DecodePart(const std::string& text);

std::string EncodeManifest(const Manifest& manifest);
// Throws kCorruption (kUnsupported for a newer manifest version) naming `path`.
Manifest ParseManifest(const std::string& text, const std::string& path);
// Reads and parses the manifest at `path` (at most 64 MiB: a larger file is
// not ours). Throws kNotFound, kCorruption.
Manifest ReadManifest(Env* env, const std::string& path);

// The catalog's view of a manifest at `path`.
CheckpointEntry ManifestCatalogEntry(const Manifest& manifest, const std::string& path);

}  // namespace ackpt
