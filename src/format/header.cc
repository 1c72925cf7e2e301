// The safetensors header with ackpt's metadata. docs/FORMAT.md, "Header".
#include "format/header.h"

#include <algorithm>
#include <cstring>
#include <limits>
#include <nlohmann/json.hpp>
#include <set>

#include "ackpt/error.h"
#include "format/bytes.h"
#include "format/checksum.h"
#include "format/constants.h"
#include "format/dtype.h"

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

// Header checksum: XXH3-64 of the header region with its own value zeroed,
// hashed in three pieces so the region is not copied.
void CheckHeaderChecksum(const std::string& region, const std::string* stored,
                         const std::string& path) {
  uint64_t stored_hash = 0;
  if (stored == nullptr || !ParseHex64(*stored, &stored_hash)) {
    Bad(path, "missing or malformed header checksum");
  }
  const std::string field = HeaderChecksumField(*stored);
  size_t pos = region.find(field);
  if (pos == std::string::npos || region.find(field, pos + 1) != std::string::npos) {
    Bad(path, "header checksum field is not present exactly once");
  }
  const std::string zero = HeaderChecksumField(kZeroHash);
  Xxh3Stream hash;
  hash.Update(region.data(), pos);
  hash.Update(zero.data(), zero.size());
  hash.Update(region.data() + pos + field.size(), region.size() - pos - field.size());
  if (hash.Digest() != stored_hash) {
    throw Error::Corruption("header checksum mismatch in '" + path + "'");
  }
}

}  // namespace

void SortForAlignment(std::vector<FlatTensor>* tensors) {
  std::stable_sort(tensors->begin(), tensors->end(), [](const FlatTensor& a, const FlatTensor& b) {
    return DtypeSize(a.dtype) > DtypeSize(b.dtype);
  });
}

std::string EncodeHeader(const std::vector<FlatTensor>& tensors, const std::string& tree_json,
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
  // The format version is written in its place below; a caller may raise it
  // (byte-grouped frames need version 3).
  std::string version = std::to_string(kFormatVersion);
  for (const auto& kv : internal_metadata) {
    if (kv.first.rfind("ackpt.", 0) != 0)
      throw Error::InvalidArgument("internal metadata key '" + kv.first + "'");
    if (kv.first == kMetaVersion) {
      version = kv.second;
      continue;
    }
    meta[kv.first] = kv.second;
  }
  meta[kMetaVersion] = version;
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
  uint8_t length[8];
  StoreLE64(length, text.size());
  std::string region(reinterpret_cast<const char*>(length), sizeof length);
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

std::string HeaderChecksumOf(const std::string& region) {
  // EncodeHeader stores it as the last member of __metadata__.
  const std::string key = std::string("\"") + kMetaHeaderChecksum + "\":\"";
  const size_t pos = region.rfind(key);
  return pos == std::string::npos ? std::string() : region.substr(pos + key.size(), 16);
}

void ValidateReadOptions(const ReadOptions& o) {
  if (o.max_header_bytes == 0 || o.max_tensors == 0 || o.max_frames == 0 ||
      o.max_nesting_depth < 1) {
    throw Error::InvalidArgument(
        "ReadOptions limits (max_header_bytes, max_tensors, max_frames, max_nesting_depth) must "
        "be positive");
  }
}

namespace {

// Shapes with more dimensions than this are rejected: no real tensor has them,
// and each costs memory here and in LibTorch.
constexpr size_t kMaxDims = 1024;

// Streams the header JSON into TensorInfos and the metadata map, so no DOM is
// built: memory is the region plus a few times its size in the result.
// Duplicate keys, which a DOM would silently collapse, are corruption.
class HeaderSax : public json::json_sax_t {
 public:
  HeaderSax(const std::string& path, FileInfo* info, const ReadOptions& options)
      : path_(path), info_(info), options_(options) {}

  bool null() override { return Scalar("null"); }
  bool boolean(bool) override { return Scalar("a boolean"); }
  bool number_integer(number_integer_t) override { return Scalar("a negative integer"); }
  bool number_unsigned(number_unsigned_t v) override {
    if (skip_ > 0 || skip_scalar_) return Skipped();
    if (stack_.empty()) return Scalar("an integer");
    switch (Top()) {
      case Ctx::kShape: {
        auto& t = info_->tensors.back();
        if (v > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()))
          Bad(path_, What() + " has a huge dimension");
        if (t.shape.size() >= kMaxDims)
          Bad(path_, What() + " has more than " + std::to_string(kMaxDims) + " dimensions");
        t.shape.push_back(static_cast<int64_t>(v));
        return true;
      }
      case Ctx::kOffsets: {
        auto& t = info_->tensors.back();
        if (num_offsets_ >= 2) Bad(path_, What() + " has more than two data_offsets");
        (num_offsets_++ == 0 ? t.begin : t.end) = v;
        return true;
      }
      default:
        return Scalar("an integer");
    }
  }
  bool number_float(number_float_t, const string_t&) override { return Scalar("a non-integer"); }
  bool binary(binary_t&) override { return Scalar("binary"); }
  bool string(string_t& v) override {
    if (skip_ > 0 || skip_scalar_) return Skipped();
    if (stack_.empty()) return Scalar("a string");
    if (Top() == Ctx::kMeta) {
      if (!info_->metadata.emplace(std::move(key_), std::move(v)).second)
        Bad(path_, "__metadata__ has a duplicate key");
      return true;
    }
    if (Top() == Ctx::kTensor && field_ == Field::kDtype) {
      info_->tensors.back().dtype = std::move(v);
      return true;
    }
    return Scalar("a string");
  }

  bool start_object(std::size_t) override {
    Enter();
    if (skip_ > 0 || skip_scalar_) return StartSkip();
    if (stack_.empty()) {
      stack_.push_back(Ctx::kTop);
      return true;
    }
    switch (Top()) {
      case Ctx::kTop:
        if (key_ == "__metadata__") {
          if (seen_meta_) Bad(path_, "duplicate __metadata__");
          seen_meta_ = true;
          stack_.push_back(Ctx::kMeta);
          return true;
        }
        if (info_->tensors.size() >= options_.max_tensors) {
          Bad(path_, "more than " + std::to_string(options_.max_tensors) +
                         " tensors (ReadOptions::max_tensors)");
        }
        info_->tensors.emplace_back();
        info_->tensors.back().name = std::move(key_);
        have_ = 0;
        stack_.push_back(Ctx::kTensor);
        return true;
      default:
        return Scalar("an object");
    }
  }
  bool key(string_t& k) override {
    if (skip_ > 0) return true;
    switch (Top()) {
      case Ctx::kTop:
      case Ctx::kMeta:
        key_ = std::move(k);
        return true;
      case Ctx::kTensor: {
        field_ = k == "dtype"          ? Field::kDtype
                 : k == "shape"        ? Field::kShape
                 : k == "data_offsets" ? Field::kOffsets
                                       : Field::kOther;
        if (field_ == Field::kOther) {
          skip_scalar_ = true;  // an extra member: ignored, whatever it holds
          return true;
        }
        const unsigned bit = 1u << static_cast<unsigned>(field_);
        if (have_ & bit) Bad(path_, What() + " has a duplicate '" + k + "'");
        have_ |= bit;
        return true;
      }
      default:
        Bad(path_, "unexpected key");
    }
  }
  bool end_object() override {
    --depth_;
    if (skip_ > 0) return EndSkip();
    if (Top() == Ctx::kTensor) {
      const std::string what = What();
      if (!(have_ & (1u << static_cast<unsigned>(Field::kDtype))))
        Bad(path_, what + " has no dtype string");
      if (!(have_ & (1u << static_cast<unsigned>(Field::kShape))))
        Bad(path_, what + " has no shape array");
      if (!(have_ & (1u << static_cast<unsigned>(Field::kOffsets))))
        Bad(path_, what + " has no data_offsets pair of non-negative integers");
    }
    stack_.pop_back();
    return true;
  }
  bool start_array(std::size_t) override {
    Enter();
    if (skip_ > 0 || skip_scalar_) return StartSkip();
    if (!stack_.empty() && Top() == Ctx::kTensor && field_ == Field::kShape) {
      stack_.push_back(Ctx::kShape);
      return true;
    }
    if (!stack_.empty() && Top() == Ctx::kTensor && field_ == Field::kOffsets) {
      stack_.push_back(Ctx::kOffsets);
      num_offsets_ = 0;
      return true;
    }
    return Scalar("an array");
  }
  bool end_array() override {
    --depth_;
    if (skip_ > 0) return EndSkip();
    if (Top() == Ctx::kOffsets && num_offsets_ != 2)
      Bad(path_, What() + " has no data_offsets pair of non-negative integers");
    stack_.pop_back();
    return true;
  }
  bool parse_error(std::size_t position, const std::string&,
                   const nlohmann::detail::exception& ex) override {
    Bad(path_, "JSON does not parse at byte " + std::to_string(position) + ": " + ex.what());
  }

 private:
  enum class Ctx { kTop, kMeta, kTensor, kShape, kOffsets };
  enum class Field { kDtype, kShape, kOffsets, kOther };

  Ctx Top() const { return stack_.back(); }
  std::string What() const { return "tensor '" + info_->tensors.back().name + "'"; }

  void Enter() {
    if (++depth_ > options_.max_nesting_depth) {
      Bad(path_, "JSON nested deeper than " + std::to_string(options_.max_nesting_depth) +
                     " (ReadOptions::max_nesting_depth)");
    }
  }
  bool StartSkip() {
    skip_scalar_ = false;
    ++skip_;
    return true;
  }
  bool EndSkip() {
    --skip_;
    return true;
  }
  bool Skipped() {
    skip_scalar_ = false;
    return true;
  }
  // A value of the wrong JSON type where `stack_` expects something else.
  bool Scalar(const char* kind) {
    if (skip_ > 0 || skip_scalar_) return Skipped();
    if (stack_.empty()) Bad(path_, "JSON is not an object");
    switch (Top()) {
      case Ctx::kTop:
        if (key_ == "__metadata__") Bad(path_, "__metadata__ is not an object");
        Bad(path_, "tensor '" + key_ + "' is not an object");
      case Ctx::kMeta:
        Bad(path_, "__metadata__ value '" + key_ + "' is not a string");
      case Ctx::kTensor:
        if (field_ == Field::kDtype) Bad(path_, What() + " has no dtype string");
        if (field_ == Field::kShape) Bad(path_, What() + " has no shape array");
        Bad(path_, What() + " has no data_offsets pair of non-negative integers");
      case Ctx::kShape:
        Bad(path_, What() + " has a shape entry that is not a non-negative integer (" + kind + ")");
      case Ctx::kOffsets:
        Bad(path_, What() + " has no data_offsets pair of non-negative integers");
    }
    Bad(path_, "unexpected JSON");
  }

  const std::string& path_;
  FileInfo* info_;
  const ReadOptions& options_;
  std::vector<Ctx> stack_;
  int depth_ = 0;
  int skip_ = 0;              // open containers inside an ignored member
  bool skip_scalar_ = false;  // the next value belongs to an ignored member
  bool seen_meta_ = false;
  std::string key_;
  Field field_ = Field::kOther;
  unsigned have_ = 0;  // Field bits seen in the current tensor entry
  int num_offsets_ = 0;
};

// A SAX handler for metadata values that are JSON objects whose leaves are
// all strings (ackpt.xxh3, ackpt.refs): anything else (a number, a bool,
// null, an array, an object deeper than `max_depth`) is corruption with
// `what`. Subclasses take the strings at the depth they expect.
class StringObjectSax : public json::json_sax_t {
 public:
  StringObjectSax(const std::string& path, const char* what, int max_depth)
      : path_(path), what_(what), max_depth_(max_depth) {}
  bool null() override { return Fail(); }
  bool boolean(bool) override { return Fail(); }
  bool number_integer(number_integer_t) override { return Fail(); }
  bool number_unsigned(number_unsigned_t) override { return Fail(); }
  bool number_float(number_float_t, const string_t&) override { return Fail(); }
  bool binary(binary_t&) override { return Fail(); }
  bool start_object(std::size_t) override {
    if (++depth_ > max_depth_) return Fail();
    Opened();
    return true;
  }
  bool key(string_t& k) override {
    key_ = std::move(k);
    return true;
  }
  bool end_object() override {
    --depth_;
    return true;
  }
  bool start_array(std::size_t) override { return Fail(); }
  bool end_array() override { return Fail(); }

 protected:
  // An object was opened at depth_ (its key, if any, in key_).
  virtual void Opened() {}
  bool Fail() { Bad(path_, what_); }
  const std::string& path_;
  const char* const what_;
  const int max_depth_;
  int depth_ = 0;
  std::string key_;
};

// Parses ackpt.xxh3 ({"name": "hex64", ...}) straight into the tensors.
class ChecksumSax : public StringObjectSax {
 public:
  ChecksumSax(const std::string& path, std::vector<TensorInfo>* tensors,
              const std::vector<size_t>& by_name)
      : StringObjectSax(path, "tensor checksum table does not match the tensors", 1),
        tensors_(tensors),
        by_name_(by_name) {}
  bool string(string_t& v) override {
    if (depth_ != 1) return Fail();
    auto it =
        std::lower_bound(by_name_.begin(), by_name_.end(), key_,
                         [&](size_t i, const std::string& k) { return (*tensors_)[i].name < k; });
    if (it == by_name_.end() || (*tensors_)[*it].name != key_)
      Bad(path_, "tensor checksum table names unknown tensor '" + key_ + "'");
    TensorInfo& t = (*tensors_)[*it];
    if (t.has_checksum) Bad(path_, "tensor checksum table lists '" + key_ + "' twice");
    if (!ParseHex64(v, &t.xxh3)) Bad(path_, "tensor '" + key_ + "' has no valid checksum");
    t.has_checksum = true;
    return true;
  }
  bool parse_error(std::size_t, const std::string&, const nlohmann::detail::exception& e) override {
    Bad(path_, std::string("tensor checksums are malformed: ") + e.what());
  }

 private:
  std::vector<TensorInfo>* tensors_;
  const std::vector<size_t>& by_name_;
};

// Parses ackpt.refs ({"file": {"name": "hex64", ...}, ...}) into references.
class ReferencesSax : public StringObjectSax {
 public:
  ReferencesSax(const std::string& path, std::vector<TensorReference>* refs, size_t max_refs)
      : StringObjectSax(path, "references are not an object of files of tensor checksums", 2),
        refs_(refs),
        max_refs_(max_refs) {}
  bool string(string_t& v) override {
    if (depth_ != 2) return Fail();
    if (refs_->size() >= max_refs_)
      Bad(path_, "more than " + std::to_string(max_refs_) +
                     " tensors and references (ReadOptions::max_tensors)");
    TensorReference r;
    r.name = std::move(key_);
    r.file = file_;
    if (!ParseHex64(v, &r.xxh3)) Bad(path_, "reference '" + r.name + "' has no valid checksum");
    refs_->push_back(std::move(r));
    return true;
  }
  bool parse_error(std::size_t, const std::string&, const nlohmann::detail::exception& e) override {
    Bad(path_, std::string("references are malformed: ") + e.what());
  }

 private:
  void Opened() override {
    if (depth_ == 2) file_ = std::move(key_);
  }
  std::vector<TensorReference>* refs_;
  const size_t max_refs_;
  std::string file_;
};

// A holder is named by its base name in the same directory: nothing that
// leaves it ("/", "." and ".."), nothing empty.
bool IsPlainFileName(const std::string& name) {
  return !name.empty() && name != "." && name != ".." && name.find('/') == std::string::npos &&
         name.find('\0') == std::string::npos;
}

void DecodeReferences(const std::string& text, const std::string& path, FileInfo* info,
                      const ReadOptions& options) {
  const size_t max_refs = static_cast<size_t>(options.max_tensors) > info->tensors.size()
                              ? static_cast<size_t>(options.max_tensors) - info->tensors.size()
                              : 0;
  {
    ReferencesSax sax(path, &info->references, max_refs);
    json::sax_parse(text.begin(), text.end(), &sax);
  }
  std::sort(info->references.begin(), info->references.end(),
            [](const TensorReference& a, const TensorReference& b) { return a.name < b.name; });
  for (size_t i = 0; i < info->references.size(); ++i) {
    const TensorReference& r = info->references[i];
    if (!IsPlainFileName(r.file))
      Bad(path, "reference '" + r.name + "' names '" + r.file + "', not a file name");
    if (i > 0 && info->references[i - 1].name == r.name)
      Bad(path, "tensor '" + r.name + "' is referenced twice");
  }
  for (const auto& t : info->tensors) {
    auto it = std::lower_bound(
        info->references.begin(), info->references.end(), t.name,
        [](const TensorReference& r, const std::string& name) { return r.name < name; });
    if (it != info->references.end() && it->name == t.name)
      Bad(path, "tensor '" + t.name + "' is both held and referenced");
  }
}

bool IsReadableVersion(const std::string& v) {
  for (int k = kOldestReadableVersion; k <= kNewestReadableVersion; ++k) {
    if (v == std::to_string(k)) return true;
  }
  return false;
}

}  // namespace

void DecodeHeader(const std::string& region, uint64_t data_bytes, const std::string& path,
                  FileInfo* info, const ReadOptions& options) {
  ValidateReadOptions(options);
  if (region.size() < 8) Bad(path, "header region shorter than its 8-byte length");
  info->tensors.clear();
  info->references.clear();
  info->metadata.clear();
  info->written_by_ackpt = false;
  info->format_version = 0;
  {
    HeaderSax sax(path, info, options);
    json::sax_parse(region.begin() + 8, region.end(), &sax);
  }
  // In an ackpt file, check the header checksum before trusting any field, so
  // a damaged header reads as corruption (and not, say, as a dtype this
  // LibTorch cannot hold).
  auto version = info->metadata.find(kMetaVersion);
  if (version != info->metadata.end() && IsReadableVersion(version->second)) {
    auto stored = info->metadata.find(kMetaHeaderChecksum);
    CheckHeaderChecksum(region, stored == info->metadata.end() ? nullptr : &stored->second, path);
  }
  for (auto& t : info->tensors) {
    const std::string what = "tensor '" + t.name + "'";
    if (!DtypeFromName(t.dtype, &t.scalar_type)) {
      throw Error::Unsupported("tensor '" + t.name + "' in '" + path + "' has dtype '" + t.dtype +
                               "', which this LibTorch cannot hold");
    }
    if (t.begin > t.end || t.end > data_bytes) {
      Bad(path, what + " has data_offsets [" + std::to_string(t.begin) + ", " +
                    std::to_string(t.end) + "] outside the " + std::to_string(data_bytes) +
                    "-byte data section");
    }
    // numel x element size must equal the byte range. Every dimension counts,
    // zeros included: [2^40, 2^40, 0] holds no bytes but no tensor can have
    // that shape, so it is corruption here rather than an error in LibTorch.
    const uint64_t esize = DtypeSize(t.scalar_type);
    const uint64_t max_numel = static_cast<uint64_t>(std::numeric_limits<int64_t>::max()) / esize;
    uint64_t nonzero = 1;
    bool zero = false;
    for (int64_t d : t.shape) {
      if (d == 0) {
        zero = true;
        continue;
      }
      if (__builtin_mul_overflow(nonzero, static_cast<uint64_t>(d), &nonzero) ||
          nonzero > max_numel) {
        Bad(path, what + " has a shape whose element count overflows");
      }
    }
    const uint64_t nbytes = zero ? 0 : nonzero * esize;
    if (nbytes != t.end - t.begin) {
      Bad(path, what + ": dtype " + t.dtype + " x shape is " + std::to_string(nbytes) +
                    " bytes but data_offsets span " + std::to_string(t.end - t.begin));
    }
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
  // A DOM would keep the last of two same-named entries; both are corruption.
  std::vector<size_t> by_name(info->tensors.size());
  for (size_t i = 0; i < by_name.size(); ++i) by_name[i] = i;
  std::sort(by_name.begin(), by_name.end(),
            [&](size_t a, size_t b) { return info->tensors[a].name < info->tensors[b].name; });
  for (size_t i = 1; i < by_name.size(); ++i) {
    if (info->tensors[by_name[i]].name == info->tensors[by_name[i - 1]].name)
      Bad(path, "duplicate tensor name '" + info->tensors[by_name[i]].name + "'");
  }

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
  if (!IsReadableVersion(version->second)) {
    throw Error::Unsupported("'" + path + "' has ackpt format version '" + version->second +
                             "'; this build reads versions " +
                             std::to_string(kOldestReadableVersion) + " to " +
                             std::to_string(kNewestReadableVersion));
  }
  info->format_version = std::stoi(version->second);
  // The header checksum was checked right after parsing (CheckHeaderChecksum).
  if (!info->metadata.count(kMetaTree)) Bad(path, "ackpt metadata has no state tree");
  auto sums = info->metadata.find(kMetaChecksums);
  if (sums == info->metadata.end()) Bad(path, "tensor checksums are missing");
  {
    ChecksumSax sax(path, &info->tensors, by_name);
    json::sax_parse(sums->second.begin(), sums->second.end(), &sax);
  }
  for (const auto& t : info->tensors) {
    if (!t.has_checksum) Bad(path, "tensor '" + t.name + "' has no valid checksum");
  }
  auto refs = info->metadata.find(kMetaReferences);
  if (refs != info->metadata.end()) DecodeReferences(refs->second, path, info, options);
}

std::vector<std::string> ReferencedFiles(const std::map<std::string, std::string>& metadata,
                                         const std::string& path) {
  auto it = metadata.find(kMetaReferences);
  if (it == metadata.end()) return {};
  FileInfo info;
  DecodeReferences(it->second, path, &info, ReadOptions{});
  std::set<std::string> files;
  for (const auto& r : info.references) files.insert(r.file);
  return {files.begin(), files.end()};
}

std::string EncodeReferences(const std::vector<TensorReference>& refs) {
  json by_file = json::object();  // std::map: files and names in byte order
  for (const auto& r : refs) by_file[r.file][r.name] = Hex64(r.xxh3);
  return by_file.dump();
}

}  // namespace format
}  // namespace ackpt
