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

// One box of a sharded tensor saved in a part: the part file holds it as
// slabs of slab_rows rows along dimension 0 (the last one may be shorter),
// tensors "sharded/<name>/<k>" (sharding.h names them).
struct ShardRecord {
  std::string name;                   // the global tensor's flattened name
  std::string dtype;                  // safetensors dtype name ("F32")
  std::vector<int64_t> global_shape;  // the global tensor's shape
  std::vector<int64_t> offsets;       // the box's first index per dimension
  std::vector<int64_t> shape;         // the box's extent per dimension
  int64_t slab_rows = 1;              // rows per slab (1 for a 0-d tensor)
};

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
    bool has_local = false;           // holds rank-local state
    std::vector<ShardRecord> shards;  // the boxes of sharded tensors it holds
    // Incremental: the files (earlier parts, in the manifest's directory)
    // holding tensors this part references.
    std::vector<std::string> references;
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
