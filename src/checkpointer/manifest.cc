#include "checkpointer/manifest.h"

#include <nlohmann/json.hpp>
#include <set>

#include "ackpt/error.h"
#include "checkpointer/metadata_keys.h"

namespace ackpt {

namespace {

using json = nlohmann::json;

constexpr const char* kManifestFormat = "ackpt.manifest";
// Version 2 adds the parts' "shards" (sharded tensors); a manifest without
// them is written as version 1, which older readers understand.
constexpr int kManifestVersion = 2;
// Manifests are small (a few hundred bytes per rank).
constexpr uint64_t kMaxManifestBytes = uint64_t{64} << 20;

json PartJson(const Manifest::Part& p) {
  json j{{"file", p.file},
         {"file_bytes", p.file_bytes},
         {"header_xxh3", p.header_xxh3},
         {"has_local", p.has_local}};
  if (!p.shards.empty()) {
    json shards = json::array();
    for (const auto& s : p.shards) {
      shards.push_back(json{{"name", s.name},
                            {"dtype", s.dtype},
                            {"global_shape", s.global_shape},
                            {"offsets", s.offsets},
                            {"shape", s.shape},
                            {"slab_rows", s.slab_rows}});
    }
    j["shards"] = std::move(shards);
  }
  if (!p.references.empty()) j["references"] = p.references;
  return j;
}

Manifest::Part PartFromJson(const json& p) {
  Manifest::Part part;
  part.file = p.at("file").get<std::string>();
  part.file_bytes = p.at("file_bytes").get<uint64_t>();
  part.header_xxh3 = p.at("header_xxh3").get<std::string>();
  part.has_local = p.value("has_local", true);
  if (p.contains("shards")) {
    for (const auto& s : p.at("shards")) {
      ShardRecord r;
      r.name = s.at("name").get<std::string>();
      r.dtype = s.at("dtype").get<std::string>();
      r.global_shape = s.at("global_shape").get<std::vector<int64_t>>();
      r.offsets = s.at("offsets").get<std::vector<int64_t>>();
      r.shape = s.at("shape").get<std::vector<int64_t>>();
      r.slab_rows = s.at("slab_rows").get<int64_t>();
      part.shards.push_back(std::move(r));
    }
  }
  if (p.contains("references")) {
    part.references = p.at("references").get<std::vector<std::string>>();
    for (const auto& f : part.references) {
      if (f.empty() || f == "." || f == ".." || f.find('/') != std::string::npos)
        throw Error::Corruption("part '" + part.file + "' references '" + f + "', not a file name");
    }
  }
  return part;
}

}  // namespace

bool Manifest::any_local() const {
  for (const auto& p : parts) {
    if (p.has_local) return true;
  }
  return false;
}

std::string EncodePart(const Manifest::Part& part) { return PartJson(part).dump(); }

Manifest::Part DecodePart(const std::string& text) {
  try {
    return PartFromJson(json::parse(text));
  } catch (const json::exception& e) {
    throw Error::Corruption(std::string("a published part does not parse: ") + e.what());
  }
}

std::string EncodeManifest(const Manifest& m) {
  json parts = json::array();
  for (const auto& p : m.parts) parts.push_back(PartJson(p));
  bool sharded = false;
  for (const auto& p : m.parts) sharded = sharded || !p.shards.empty();
  json j{{"format", kManifestFormat},
         {"version", sharded ? kManifestVersion : 1},
         {"index", m.index},
         {"world_size", m.world_size},
         {"time", m.time},
         {"generation", m.generation},
         {"replicated", m.replicated},
         {"parts", parts}};
  if (m.parent >= 0) j["parent"] = m.parent;
  j["metrics"] = json::parse(EncodeMetrics(m.metrics));
  return j.dump(1) + "\n";
}

Manifest ParseManifest(const std::string& text, const std::string& path) {
  Manifest m;
  try {
    const json j = json::parse(text);
    if (!j.is_object() || j.value("format", "") != kManifestFormat)
      throw Error::Corruption("'" + path + "' is not an ackpt manifest");
    const int version = j.value("version", 0);
    if (version < 1 || version > kManifestVersion) {
      throw Error::Unsupported("'" + path + "' has manifest version " +
                               std::to_string(j.value("version", 0)));
    }
    m.index = j.at("index").get<int64_t>();
    m.world_size = j.at("world_size").get<int>();
    m.time = j.value("time", 0.0);
    m.generation = j.value("generation", uint64_t{0});
    m.parent = j.value("parent", int64_t{-1});
    if (j.contains("metrics")) m.metrics = ParseMetricsJson(j["metrics"].dump());
    if (j.contains("replicated")) m.replicated = j["replicated"].get<std::vector<std::string>>();
    for (const auto& p : j.at("parts")) {
      Manifest::Part part = PartFromJson(p);
      if (part.file.find('/') != std::string::npos)
        throw Error::Corruption("'" + path + "' names a part outside its directory");
      m.parts.push_back(std::move(part));
    }
    if (m.world_size <= 0 || static_cast<int>(m.parts.size()) != m.world_size)
      throw Error::Corruption("'" + path + "' lists " + std::to_string(m.parts.size()) +
                              " parts for world size " + std::to_string(m.world_size));
  } catch (const json::exception& e) {
    throw Error::Corruption("manifest '" + path + "' does not parse: " + e.what());
  }
  return m;
}

Manifest ReadManifest(Env* env, const std::string& path) {
  auto f = env->NewRandomAccessFile(path);
  if (f->Size() > kMaxManifestBytes)
    throw Error::Corruption("'" + path + "' is larger than " + std::to_string(kMaxManifestBytes) +
                            " bytes: not a manifest");
  std::string s(static_cast<size_t>(f->Size()), '\0');
  f->Read(0, s.size(), s.data());
  return ParseManifest(s, path);
}

CheckpointEntry ManifestCatalogEntry(const Manifest& m, const std::string& path) {
  CheckpointEntry e;
  e.index = m.index;
  e.path = path;
  std::set<std::string> references;
  for (const auto& p : m.parts) {
    e.file_bytes += p.file_bytes;
    e.parts.push_back(p.file);
    references.insert(p.references.begin(), p.references.end());
  }
  e.references.assign(references.begin(), references.end());
  e.world_size = m.world_size;
  e.save_time = m.time;
  e.metrics = m.metrics;
  e.parent = m.parent;
  e.generation = m.generation;
  return e;
}

}  // namespace ackpt
