// The safetensors header with ackpt's metadata. docs/FORMAT.md, "Header".
#define XXH_INLINE_ALL
#include <xxhash.h>

#include <algorithm>
#include <cstring>
#include <limits>
#include <nlohmann/json.hpp>
#include <set>

#include "ackpt/error.h"
#include "format/internal.h"

namespace ackpt {
namespace format {

using json = nlohmann::json;
using ordered_json = nlohmann::ordered_json;

namespace {

constexpr const char* kZeroHash = "0000000000000000";

std::string HeaderChecksumField(const std::string& hex) {
  return std::string("\"") + kMetaHeaderChecksum + "\":\"" + hex + "\"";
}

bool ParseHex64(const std::string& s, uint64_t* out) {
  if (s.size() != 16) return false;
  uint64_t v = 0;
  for (char c : s) {
    v <<= 4;
    if (c >= '0' && c <= '9') {
      v |= static_cast<uint64_t>(c - '0');
    } else if (c >= 'a' && c <= 'f') {
      v |= static_cast<uint64_t>(c - 'a' + 10);
    } else {
      return false;
    }
  }
  *out = v;
  return true;
}

[[noreturn]] void Bad(const std::string& path, const std::string& what) {
  throw Error::Corruption("invalid safetensors header in '" + path + "': " + what);
}

// Header checksum: XXH3-64 of the header region with its own value zeroed.
void CheckHeaderChecksum(const std::string& region, const json* stored, const std::string& path) {
  uint64_t stored_hash = 0;
  if (stored == nullptr || !stored->is_string() ||
      !ParseHex64(stored->get_ref<const std::string&>(), &stored_hash)) {
    Bad(path, "missing or malformed header checksum");
  }
  const std::string field = HeaderChecksumField(stored->get_ref<const std::string&>());
  size_t pos = region.find(field);
  if (pos == std::string::npos || region.find(field, pos + 1) != std::string::npos) {
    Bad(path, "header checksum field is not present exactly once");
  }
  std::string zeroed = region;
  zeroed.replace(pos, field.size(), HeaderChecksumField(kZeroHash));
  if (Xxh3(zeroed.data(), zeroed.size()) != stored_hash) {
    throw Error::Corruption("header checksum mismatch in '" + path + "'");
  }
}

}  // namespace

uint64_t Xxh3(const void* data, size_t n) { return XXH3_64bits(data, n); }

std::string Hex64(uint64_t v) {
  static const char* kDigits = "0123456789abcdef";
  std::string s(16, '0');
  for (int i = 15; i >= 0; --i) {
    s[static_cast<size_t>(i)] = kDigits[v & 0xf];
    v >>= 4;
  }
  return s;
}

void SortForAlignment(std::vector<SerializedTensor>* tensors) {
  std::stable_sort(tensors->begin(), tensors->end(),
                   [](const SerializedTensor& a, const SerializedTensor& b) {
                     return DtypeSize(a.dtype) > DtypeSize(b.dtype);
                   });
}

std::string EncodeHeader(const std::vector<SerializedTensor>& tensors, const std::string& tree_json,
                         const std::map<std::string, std::string>& user_metadata,
                         const std::map<std::string, std::string>& internal_metadata) {
  ordered_json meta = ordered_json::object();
  meta[kMetaFormat] = "pt";
  for (const auto& kv : user_metadata) {
    if (kv.first == kMetaFormat || kv.first.rfind("ackpt.", 0) == 0) {
      throw Error::InvalidArgument("metadata key '" + kv.first + "' is reserved");
    }
    meta[kv.first] = kv.second;
  }
  for (const auto& kv : internal_metadata) {
    if (kv.first.rfind("ackpt.", 0) != 0)
      throw Error::InvalidArgument("internal metadata key '" + kv.first + "'");
    meta[kv.first] = kv.second;
  }
  meta[kMetaVersion] = std::to_string(kFormatVersion);
  meta[kMetaTree] = tree_json;
  ordered_json sums = ordered_json::object();
  for (const auto& t : tensors) sums[t.name] = Hex64(t.xxh3);
  meta[kMetaChecksums] = sums.dump();
  meta[kMetaHeaderChecksum] = kZeroHash;

  ordered_json h = ordered_json::object();
  h["__metadata__"] = std::move(meta);
  std::set<std::string> seen;
  uint64_t offset = 0;
  for (const auto& t : tensors) {
    if (!seen.insert(t.name).second)
      throw Error::InvalidArgument("duplicate tensor name '" + t.name + "'");
    uint64_t numel = 1;
    for (int64_t d : t.shape) numel *= static_cast<uint64_t>(d);
    if (numel * DtypeSize(t.dtype) != t.nbytes) {
      throw Error::InvalidArgument("tensor '" + t.name + "': byte size does not match its shape");
    }
    h[t.name] = ordered_json{{"dtype", DtypeToName(t.dtype, "tensor '" + t.name + "'")},
                             {"shape", t.shape},
                             {"data_offsets", {offset, offset + t.nbytes}}};
    offset += t.nbytes;
  }
  std::string text;
  try {
    text = h.dump();
  } catch (const json::type_error& e) {
    throw Error::InvalidArgument(std::string("a name or metadata string is not valid UTF-8: ") +
                                 e.what());
  }
  text.append((8 - text.size() % 8) % 8, ' ');
  if (text.size() > kMaxHeaderBytes) {
    throw Error::InvalidArgument("header of " + std::to_string(text.size()) +
                                 " bytes exceeds the safetensors limit of 100 MB");
  }
  std::string region(8, '\0');
  uint64_t n = text.size();
  for (int i = 0; i < 8; ++i)
    region[static_cast<size_t>(i)] = static_cast<char>((n >> (8 * i)) & 0xff);
  region += text;
  // The real field is the last member of __metadata__ and tensor entries
  // cannot contain the pattern, so it is the last occurrence. An earlier one
  // can only come from a user key ending in "ackpt.header_xxh3 with a quote
  // before it (escaped as \"), whose value must be left alone.
  const std::string placeholder = HeaderChecksumField(kZeroHash);
  size_t pos = region.rfind(placeholder);
  const uint64_t hash = Xxh3(region.data(), region.size());
  region.replace(pos, placeholder.size(), HeaderChecksumField(Hex64(hash)));
  return region;
}

void DecodeHeader(const std::string& region, uint64_t data_bytes, const std::string& path,
                  FileInfo* info) {
  json h;
  try {
    h = json::parse(region.begin() + 8, region.end());
  } catch (const json::exception& e) {
    Bad(path, std::string("JSON does not parse: ") + e.what());
  }
  if (!h.is_object()) Bad(path, "JSON is not an object");
  // In a file of this ackpt version, check the header checksum before trusting
  // any field, so a damaged header reads as corruption (and not, say, as a
  // dtype this LibTorch cannot hold).
  const auto meta = h.find("__metadata__");
  if (meta != h.end() && meta->is_object()) {
    const auto version = meta->find(kMetaVersion);
    if (version != meta->end() && version->is_string() &&
        version->get_ref<const std::string&>() == std::to_string(kFormatVersion)) {
      const auto stored = meta->find(kMetaHeaderChecksum);
      CheckHeaderChecksum(region, stored == meta->end() ? nullptr : &*stored, path);
    }
  }
  info->tensors.clear();
  info->metadata.clear();
  for (auto it = h.begin(); it != h.end(); ++it) {
    const std::string& name = it.key();
    const json& v = it.value();
    if (name == "__metadata__") {
      if (!v.is_object()) Bad(path, "__metadata__ is not an object");
      for (auto m = v.begin(); m != v.end(); ++m) {
        if (!m.value().is_string())
          Bad(path, "__metadata__ value '" + m.key() + "' is not a string");
        info->metadata[m.key()] = m.value().get<std::string>();
      }
      continue;
    }
    const std::string what = "tensor '" + name + "'";
    if (!v.is_object()) Bad(path, what + " is not an object");
    if (!v.contains("dtype") || !v["dtype"].is_string()) Bad(path, what + " has no dtype string");
    if (!v.contains("shape") || !v["shape"].is_array()) Bad(path, what + " has no shape array");
    if (!v.contains("data_offsets") || !v["data_offsets"].is_array() ||
        v["data_offsets"].size() != 2 || !v["data_offsets"][0].is_number_unsigned() ||
        !v["data_offsets"][1].is_number_unsigned()) {
      Bad(path, what + " has no data_offsets pair of non-negative integers");
    }
    TensorInfo t;
    t.name = name;
    t.dtype = v["dtype"].get<std::string>();
    if (!DtypeFromName(t.dtype, &t.scalar_type)) {
      throw Error::Unsupported("tensor '" + name + "' in '" + path + "' has dtype '" + t.dtype +
                               "', which this LibTorch cannot hold");
    }
    t.begin = v["data_offsets"][0].get<uint64_t>();
    t.end = v["data_offsets"][1].get<uint64_t>();
    if (t.begin > t.end || t.end > data_bytes) {
      Bad(path, what + " has data_offsets [" + std::to_string(t.begin) + ", " +
                    std::to_string(t.end) + "] outside the " + std::to_string(data_bytes) +
                    "-byte data section");
    }
    // numel * element size must equal the byte range; compute without overflow.
    const uint64_t esize = DtypeSize(t.scalar_type);
    bool zero = false;
    for (const auto& d : v["shape"]) {
      if (!d.is_number_unsigned())
        Bad(path, what + " has a shape entry that is not a non-negative integer");
      uint64_t dim = d.get<uint64_t>();
      if (dim > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()))
        Bad(path, what + " has a huge dimension");
      t.shape.push_back(static_cast<int64_t>(dim));
      if (dim == 0) zero = true;
    }
    uint64_t numel = zero ? 0 : 1;
    if (!zero) {
      const uint64_t max_numel = data_bytes / esize;
      for (int64_t dim : t.shape) {
        if (numel > max_numel / static_cast<uint64_t>(dim))
          Bad(path, what + " has a shape larger than the data section");
        numel *= static_cast<uint64_t>(dim);
      }
    }
    if (numel * esize != t.end - t.begin) {
      Bad(path, what + ": dtype " + t.dtype + " x shape is " + std::to_string(numel * esize) +
                    " bytes but data_offsets span " + std::to_string(t.end - t.begin));
    }
    info->tensors.push_back(std::move(t));
  }
  std::sort(info->tensors.begin(), info->tensors.end(),
            [](const TensorInfo& a, const TensorInfo& b) {
              return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
            });
  uint64_t expected = 0;
  for (const auto& t : info->tensors) {
    if (t.begin != expected) {
      Bad(path, "tensor '" + t.name + "' starts at " + std::to_string(t.begin) + ", expected " +
                    std::to_string(expected) +
                    " (data must be contiguous without gaps or overlaps)");
    }
    expected = t.end;
  }
  if (expected != data_bytes) {
    Bad(path, "tensors cover " + std::to_string(expected) + " bytes but the data section has " +
                  std::to_string(data_bytes));
  }

  auto version = info->metadata.find(kMetaVersion);
  if (version == info->metadata.end()) {
    // A foreign safetensors file, unless it carries ackpt's reserved keys: then
    // the version key itself was damaged, and reading the file as a flat
    // foreign one would skip every checksum and return the wrong structure.
    for (const auto& kv : info->metadata) {
      if (kv.first.rfind("ackpt.", 0) == 0) {
        Bad(path, "ackpt metadata '" + kv.first + "' without '" + kMetaVersion + "'");
      }
    }
    return;
  }
  info->written_by_ackpt = true;
  if (version->second != std::to_string(kFormatVersion)) {
    throw Error::Unsupported("'" + path + "' has ackpt format version '" + version->second +
                             "'; this build reads version " + std::to_string(kFormatVersion));
  }
  // The header checksum was checked right after parsing (CheckHeaderChecksum).
  if (!info->metadata.count(kMetaTree)) Bad(path, "ackpt metadata has no state tree");
  json sums;
  try {
    sums = json::parse(info->metadata.at(kMetaChecksums));
  } catch (const std::exception& e) {
    Bad(path, std::string("tensor checksums are missing or malformed: ") + e.what());
  }
  if (!sums.is_object() || sums.size() != info->tensors.size())
    Bad(path, "tensor checksum table does not match the tensors");
  for (auto& t : info->tensors) {
    auto s = sums.find(t.name);
    if (s == sums.end() || !s->is_string() || !ParseHex64(s->get<std::string>(), &t.xxh3)) {
      Bad(path, "tensor '" + t.name + "' has no valid checksum");
    }
    t.has_checksum = true;
  }
}

}  // namespace format
}  // namespace ackpt
