// Validating, parallel checkpoint reader: CheckpointReader (ackpt/format.h).
#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>

#include <algorithm>
#include <new>
#include <nlohmann/json.hpp>
#include <set>

#include "ackpt/error.h"
#include "format/bytes.h"
#include "format/checksum.h"
#include "format/codec.h"
#include "format/constants.h"
#include "format/dtype.h"
#include "format/flatten.h"
#include "format/frame_reader.h"
#include "format/header.h"
#include "format/open_files.h"
#include "format/parallel.h"
#include "format/read_targets.h"
#include "format/seekable.h"
#include "io/atomic_file.h"

namespace ackpt {
namespace format {

namespace {

// Plain files are read in blocks of this size so large tensors load in parallel.
constexpr uint64_t kReadBlock = 8 << 20;
// Destinations that cannot take the bytes directly (non-CPU, non-contiguous,
// conjugate/negative views) are filled through contiguous CPU bounce tensors,
// in batches of at most this many bytes (one larger tensor goes alone), so a
// load into such tensors costs the state plus this much.
constexpr uint64_t kBounceBatch = 64 << 20;

// "F32 [2, 3]"
std::string Describe(const std::string& dtype, at::IntArrayRef shape) {
  std::string s = dtype + " [";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

std::string DtypeNameOrRaw(at::ScalarType t) {
  try {
    return DtypeToName(t, "destination");
  } catch (const Error&) {
    return c10::toString(t);
  }
}

// Runs f, letting only ackpt::Error out: LibTorch, JSON, allocation and any
// other exception (a user's Env) are wrapped with the path and the step.
template <typename F>
auto Guard(const std::string& path, const char* step, F&& f) -> decltype(f()) {
  try {
    return f();
  } catch (const Error&) {
    throw;
  } catch (const c10::Error& e) {
    throw Error::Unsupported("'" + path + "': LibTorch failed while " + step + ": " +
                             e.what_without_backtrace());
  } catch (const nlohmann::json::exception& e) {
    throw Error::Corruption("'" + path + "': malformed JSON while " + step + ": " + e.what());
  } catch (const std::bad_alloc&) {
    throw Error::Unsupported("'" + path + "': out of memory while " + step);
  } catch (const std::exception& e) {
    throw Error(Error::Code::kIOError, "'" + path + "': " + step + ": " + e.what());
  }
}

class ReaderImpl final : public CheckpointReader {
 public:
  // resolve_references: open the files an incremental checkpoint's
  // references name (a holder itself is opened without: only the tensors it
  // holds are read from it).
  ReaderImpl(std::unique_ptr<RandomAccessFile> file, const ReadOptions& options, Env* env,
             bool resolve_references)
      : registration_(file->path()), file_(std::move(file)), options_(options), env_(env) {
    ValidateReadOptions(options_);
    info_.path = file_->path();
    info_.file_bytes = file_->Size();
    uint64_t logical = info_.file_bytes;
    if (LooksCompressed(*file_)) {
      info_.compressed = true;
      frames_.set_table(ReadSeekTable(*file_, options_.max_frames));
      info_.num_frames = frames_.table().num_frames();
      logical = frames_.table().logical_bytes;
    }
    info_.logical_bytes = logical;
    if (logical < 8)
      Corrupt("too small to hold a safetensors header (" + std::to_string(logical) + " bytes)");
    std::string region;
    frames_.ReadPrefix(8, &region);
    const uint64_t n = LoadLE64(reinterpret_cast<const uint8_t*>(region.data()));
    if (n > options_.max_header_bytes) {
      Corrupt("header length " + std::to_string(n) + " exceeds the limit of " +
              std::to_string(options_.max_header_bytes) + " bytes (ReadOptions::max_header_bytes)");
    }
    if (n > logical - 8) {
      Corrupt("header length " + std::to_string(n) + " exceeds the " + std::to_string(logical) +
              "-byte stream (truncated file?)");
    }
    frames_.ReadPrefix(8 + n, &region);
    info_.header_bytes = region.size();
    DecodeHeader(region, logical - region.size(), info_.path, &info_, options_);
    codec::CheckFileCodec(info_);
    if (info_.compressed && info_.format_version >= kByteGroupedFormatVersion)
      frames_.set_layout(codec::LayoutOf(info_));  // byte-grouped frames are cut by it
    if (info_.compressed && info_.format_version >= 2 &&
        frames_.table().frame(0).decompressed_size != info_.header_bytes) {
      Corrupt("format version " + std::to_string(info_.format_version) +
              " requires the header region (" + std::to_string(info_.header_bytes) +
              " bytes) alone in the first zstd frame, which holds " +
              std::to_string(frames_.table().frame(0).decompressed_size));
    }
    all_tensors_ = info_.tensors;
    if (resolve_references) ResolveReferences();
  }

  const FileInfo& info() const override { return info_; }
  const std::vector<TensorInfo>& all_tensors() const override { return all_tensors_; }

  StateDict ReadStateDict() override {
    return Guard(info_.path, "reading the state", [&] { return ReadStateDictImpl(nullptr, true); });
  }

  StateDict ReadStateDictInto(const std::map<std::string, at::Tensor>& destinations,
                              bool strict) override {
    return Guard(info_.path, "reading the state",
                 [&] { return ReadStateDictImpl(&destinations, strict); });
  }

  std::map<std::string, at::Tensor> ReadTensors(const std::vector<std::string>& names) override {
    return Guard(info_.path, "reading tensors",
                 [&] { return Load(Lookup(names), /*destinations=*/nullptr, /*strict=*/true); });
  }

  void ReadInto(const std::map<std::string, at::Tensor>& destinations) override {
    Guard(info_.path, "reading into tensors", [&] {
      std::vector<std::string> names;
      names.reserve(destinations.size());
      for (const auto& kv : destinations) names.push_back(kv.first);
      Load(Lookup(names), &destinations, /*strict=*/true);
    });
  }

  void ReadInto(const StateDict& destinations) override {
    std::map<std::string, at::Tensor> flat = FlattenTensors(destinations);
    ReadInto(flat);
  }

  void Verify() override {
    Guard(info_.path, "verifying", [&] { VerifyImpl(); });
  }

  void ExportSafetensors(const std::string& out_path, Env* env) override {
    Guard(info_.path, "exporting", [&] { ExportImpl(out_path, env); });
  }

 private:
  // Opens the holder of every reference and checks that it holds that
  // tensor itself with the referenced checksum; fills each reference's
  // dtype and shape from it. A holder that is missing, unreadable or holds
  // something else makes this file unreadable (kCorruption).
  void ResolveReferences() {
    const std::string dir = DirName(info_.path);
    // all_tensors_ holds the tensors of this file; the references' entries
    // follow, and are never moved again (Load tells them by address).
    all_tensors_.reserve(info_.tensors.size() + info_.references.size());
    for (TensorReference& r : info_.references) {
      auto it = holders_.find(r.file);
      if (it == holders_.end()) {
        const std::string holder_path = JoinPath(dir, r.file);
        std::unique_ptr<ReaderImpl> holder;
        try {
          holder = std::make_unique<ReaderImpl>(env_->NewRandomAccessFile(holder_path), options_,
                                                env_, /*resolve_references=*/false);
        } catch (const Error& e) {
          Corrupt("tensor '" + r.name + "' is held by '" + holder_path +
                  "', which cannot be read: " + e.what());
        }
        if (!holder->info_.written_by_ackpt)
          Corrupt("tensor '" + r.name + "' is held by '" + holder_path +
                  "', which is not an ackpt checkpoint");
        it = holders_.emplace(r.file, std::move(holder)).first;
      }
      ReaderImpl& holder = *it->second;
      const TensorInfo* held = holder.Held(r.name);
      if (held == nullptr || held->xxh3 != r.xxh3) {
        Corrupt("tensor '" + r.name + "' is held by '" + holder.info_.path + "', which " +
                (held == nullptr ? std::string("does not hold a tensor of that name")
                                 : "holds it with checksum " + Hex64(held->xxh3) + ", not " +
                                       Hex64(r.xxh3) + " (the file was replaced?)"));
      }
      r.dtype = held->dtype;
      r.scalar_type = held->scalar_type;
      r.shape = held->shape;
      r.nbytes = held->nbytes();
      all_tensors_.push_back(*held);
      ref_holders_.push_back(&holder);
    }
  }

  // The entry of a tensor this file holds itself, or null.
  const TensorInfo* Held(const std::string& name) const {
    if (held_by_name_.empty() && !info_.tensors.empty()) {
      for (const auto& t : info_.tensors) held_by_name_.emplace(t.name, &t);
    }
    auto it = held_by_name_.find(name);
    return it == held_by_name_.end() ? nullptr : it->second;
  }

  // The references' entries: all_tensors_ after this file's own.
  const TensorInfo* RefInfosBegin() const { return all_tensors_.data() + info_.tensors.size(); }
  const TensorInfo* RefInfosEnd() const { return all_tensors_.data() + all_tensors_.size(); }

  // Which holder reads a wanted entry (null: this file): entries of
  // references point into all_tensors_ past this file's own.
  ReaderImpl* HolderOf(const TensorInfo* t) const {
    if (t < RefInfosBegin() || t >= RefInfosEnd()) return nullptr;
    return ref_holders_[static_cast<size_t>(t - RefInfosBegin())];
  }

  // The header entries of `names` (unknown ones throw kNotFound), each once.
  std::vector<const TensorInfo*> Lookup(const std::vector<std::string>& names) const {
    std::map<std::string, const TensorInfo*> by_name;
    for (const auto& t : info_.tensors) by_name[t.name] = &t;
    for (const TensorInfo* t = RefInfosBegin(); t != RefInfosEnd(); ++t) by_name[t->name] = t;
    std::vector<const TensorInfo*> out;
    std::set<std::string> seen;
    for (const auto& name : names) {
      auto it = by_name.find(name);
      if (it == by_name.end())
        throw Error::NotFound("no tensor '" + name + "' in '" + info_.path + "'");
      if (seen.insert(name).second) out.push_back(it->second);
    }
    return out;
  }

  StateDict ReadStateDictImpl(const std::map<std::string, at::Tensor>* destinations, bool strict) {
    std::vector<const TensorInfo*> all;
    all.reserve(all_tensors_.size());
    for (const auto& t : info_.tensors) all.push_back(&t);
    for (const TensorInfo* t = RefInfosBegin(); t != RefInfosEnd(); ++t) all.push_back(t);
    if (strict && destinations != nullptr) {
      std::set<std::string> names;
      for (const auto* t : all) names.insert(t->name);
      for (const auto& kv : *destinations) {
        if (names.count(kv.first) == 0) {
          throw Error::NotFound("no tensor '" + kv.first + "' in '" + info_.path +
                                "' for the destination of that name");
        }
      }
    }
    std::map<std::string, at::Tensor> tensors = Load(all, destinations, strict);
    if (!info_.written_by_ackpt) {
      StateDict flat;
      for (const auto& t : info_.tensors) flat.set(t.name, tensors.at(t.name));
      return flat;
    }
    return Unflatten(info_.metadata.at(kMetaTree), tensors, info_.path, options_.max_nesting_depth);
  }

  // Why `dst` cannot take tensor t's bytes ("" when it can).
  std::string Mismatch(const TensorInfo& t, const at::Tensor& dst) const {
    if (!dst.defined()) return "the destination is an undefined tensor";
    if (dst.layout() != at::kStrided) {
      return "the destination is not a dense (strided) tensor";
    }
    if (dst.scalar_type() != t.scalar_type || dst.sizes() != at::IntArrayRef(t.shape)) {
      return "checkpoint " + Describe(t.dtype, t.shape) + " vs destination " +
             Describe(DtypeNameOrRaw(dst.scalar_type()), dst.sizes());
    }
    return "";
  }

  // Reads `wanted` and returns them by name. A tensor with a destination in
  // `destinations` is read into it when its dtype and shape match (else:
  // strict throws kInvalidArgument naming both, lenient allocates a fresh
  // tensor); the others into fresh CPU tensors. Contiguous CPU destinations
  // take the bytes directly; others through bounce tensors (kBounceBatch).
  // Every checksum is checked on the bytes as they land.
  // Referenced tensors are read by their holders, after this file's own.
  std::map<std::string, at::Tensor> Load(const std::vector<const TensorInfo*>& all_wanted,
                                         const std::map<std::string, at::Tensor>* destinations,
                                         bool strict) {
    std::vector<const TensorInfo*> wanted;
    std::map<ReaderImpl*, std::vector<const TensorInfo*>> by_holder;
    for (const TensorInfo* t : all_wanted) {
      ReaderImpl* holder = HolderOf(t);
      if (holder == nullptr) {
        wanted.push_back(t);
        continue;
      }
      // Strict mismatches are found before anything is read, as for held tensors.
      if (strict && destinations != nullptr) {
        auto it = destinations->find(t->name);
        if (it != destinations->end()) {
          const std::string why = Mismatch(*t, it->second);
          if (!why.empty()) {
            throw Error::InvalidArgument("cannot read tensor '" + t->name + "' of '" + info_.path +
                                         "' into its destination: " + why);
          }
        }
      }
      by_holder[holder].push_back(holder->Held(t->name));
    }
    std::map<std::string, at::Tensor> out = LoadHeld(wanted, destinations, strict);
    for (auto& kv : by_holder) {
      std::map<std::string, at::Tensor> got = kv.first->LoadHeld(kv.second, destinations, strict);
      out.insert(got.begin(), got.end());
    }
    return out;
  }

  std::map<std::string, at::Tensor> LoadHeld(const std::vector<const TensorInfo*>& wanted,
                                             const std::map<std::string, at::Tensor>* destinations,
                                             bool strict) {
    std::map<std::string, at::Tensor> out;
    std::vector<Target> direct;
    std::vector<std::pair<const TensorInfo*, at::Tensor>> bounced;
    std::vector<at::Tensor> touched;
    for (const TensorInfo* t : wanted) {
      if (destinations != nullptr) {
        auto it = destinations->find(t->name);
        if (it != destinations->end()) {
          const std::string why = Mismatch(*t, it->second);
          if (why.empty()) {
            const at::Tensor& d = it->second;
            out[t->name] = d;
            touched.push_back(d);
            if (d.device().is_cpu() && d.is_contiguous() && !d.is_conj() && !d.is_neg()) {
              if (t->nbytes() > 0) direct.push_back({t, static_cast<uint8_t*>(d.data_ptr())});
            } else if (t->nbytes() > 0) {
              bounced.emplace_back(t, d);
            }
            continue;
          }
          if (strict) {
            throw Error::InvalidArgument("cannot read tensor '" + t->name + "' of '" + info_.path +
                                         "' into its destination: " + why);
          }
        }
      }
      at::Tensor fresh;
      try {
        fresh = at::empty(t->shape, at::TensorOptions().dtype(t->scalar_type));
      } catch (const c10::Error& e) {
        throw Error::Unsupported("'" + info_.path + "': cannot allocate tensor '" + t->name +
                                 "' (" + std::to_string(t->nbytes()) +
                                 " bytes): " + e.what_without_backtrace());
      }
      out[t->name] = fresh;
      if (t->nbytes() > 0) direct.push_back({t, static_cast<uint8_t*>(fresh.data_ptr())});
    }
    ReadTargets(direct);
    // Bounce batches: read into contiguous CPU tensors, then copy_ (which
    // handles strides, devices and conj/neg views).
    for (size_t i = 0; i < bounced.size();) {
      std::vector<at::Tensor> bufs;
      std::vector<Target> batch;
      uint64_t bytes = 0;
      size_t j = i;
      for (; j < bounced.size() && (j == i || bytes + bounced[j].first->nbytes() <= kBounceBatch);
           ++j) {
        const TensorInfo* t = bounced[j].first;
        bufs.push_back(at::empty(t->shape, at::TensorOptions().dtype(t->scalar_type)));
        batch.push_back({t, static_cast<uint8_t*>(bufs.back().data_ptr())});
        bytes += t->nbytes();
      }
      ReadTargets(batch);
      at::NoGradGuard no_grad;
      for (size_t k = i; k < j; ++k) bounced[k].second.copy_(bufs[k - i]);
      i = j;
    }
    // Writes through data_ptr() bypass autograd's version counter; bump it
    // so anything that saved these tensors (autograd, an overlapped
    // snapshot) sees they changed.
    for (auto& d : touched) {
      if (!d.is_inference()) d.unsafeGetTensorImpl()->bump_version();
    }
    return out;
  }

  // This file's own checksums, then every holder's.
  void VerifyImpl() {
    VerifyHeld();
    for (auto& kv : holders_) kv.second->VerifyHeld();
  }

  void VerifyHeld() {
    if (!info_.compressed) {
      ParallelFor(info_.tensors.size(), options_.threads, [&](size_t i) {
        const TensorInfo& t = info_.tensors[i];
        if (!t.has_checksum) return;
        Xxh3Stream hash;
        std::string buf(static_cast<size_t>(std::min<uint64_t>(kReadBlock, t.nbytes())), '\0');
        for (uint64_t off = t.begin; off < t.end; off += kReadBlock) {
          const size_t n = static_cast<size_t>(std::min<uint64_t>(kReadBlock, t.end - off));
          file_->Read(info_.header_bytes + off, n, buf.data());
          hash.Update(buf.data(), n);
        }
        if (hash.Digest() != t.xxh3) {
          throw Error::Corruption("checksum mismatch in tensor '" + t.name + "' of '" + info_.path +
                                  "'");
        }
      });
      return;
    }
    // Compressed: decompress windows of frames in parallel, then feed the bytes
    // in order to one streaming hash per tensor.
    std::vector<Xxh3Stream> hashes(info_.tensors.size());
    size_t tensor = 0;
    frames_.ForEachFrame(0, [&](const FrameEntry& f, const std::string& buf) {
      uint64_t pos = f.decompressed_offset;
      const uint64_t end = pos + f.decompressed_size;
      while (pos < end && tensor < info_.tensors.size()) {
        const TensorInfo& t = info_.tensors[tensor];
        const uint64_t tb = info_.header_bytes + t.begin, te = info_.header_bytes + t.end;
        if (pos < tb) pos = std::min(end, tb);
        if (pos >= end) break;
        const uint64_t stop = std::min(end, te);
        hashes[tensor].Update(buf.data() + (pos - f.decompressed_offset),
                              static_cast<size_t>(stop - pos));
        pos = stop;
        if (pos == te) ++tensor;
      }
    });
    for (size_t i = 0; i < info_.tensors.size(); ++i) {
      const TensorInfo& t = info_.tensors[i];
      if (t.has_checksum && hashes[i].Digest() != t.xxh3) {
        throw Error::Corruption("checksum mismatch in tensor '" + t.name + "' of '" + info_.path +
                                "'");
      }
    }
  }

  void ExportImpl(const std::string& out_path, Env* env) {
    if (options_.verify_checksums) VerifyImpl();
    if (!info_.references.empty()) {
      MaterializeImpl(out_path, env);
      return;
    }
    AtomicWrite(env, out_path, /*fsync=*/true, [&](WritableFile* out) {
      if (!info_.compressed) {
        std::string buf(static_cast<size_t>(std::min<uint64_t>(kReadBlock, info_.logical_bytes)),
                        '\0');
        for (uint64_t off = 0; off < info_.logical_bytes; off += kReadBlock) {
          const size_t n =
              static_cast<size_t>(std::min<uint64_t>(kReadBlock, info_.logical_bytes - off));
          file_->Read(off, n, buf.data());
          out->Append(buf.data(), n);
        }
        return;
      }
      size_t first_data_frame = 0;
      if (info_.format_version == kByteGroupedFormatVersion) {
        // Frame 0 is exactly the header region (versions 2 and 3).
        const std::string header = PlainExportHeader();
        out->Append(header.data(), header.size());
        first_data_frame = 1;
      }
      frames_.ForEachFrame(first_data_frame, [&](const FrameEntry&, const std::string& bytes) {
        out->Append(bytes.data(), bytes.size());
      });
    });
  }

  // The header a version-2 writer gives the same tensors and metadata. A
  // version-3 file's logical stream is plain safetensors whose header still
  // names the byte-grouped codec; its export holds no byte-grouped frame, so
  // it says version 2 (readers of versions 1-2 open it) and drops
  // ackpt.codec, with the header checksum recomputed. Tensors keep their
  // data offsets (ackpt lays the data section out without gaps).
  std::string PlainExportHeader() const {
    std::vector<const TensorInfo*> by_offset;
    for (const auto& t : info_.tensors) by_offset.push_back(&t);
    std::stable_sort(by_offset.begin(), by_offset.end(),
                     [](const TensorInfo* a, const TensorInfo* b) { return a->begin < b->begin; });
    std::vector<FlatTensor> tensors;
    uint64_t offset = 0;
    for (const TensorInfo* t : by_offset) {
      if (t->begin != offset || !t->has_checksum)
        Corrupt("tensor '" + t->name + "' does not follow the data layout of a version-3 file");
      tensors.push_back(Described(*t));
      offset = t->end;
    }
    return PlainHeaderOf(tensors);
  }

  // A tensor of a header as the encoder describes it (no bytes).
  static FlatTensor Described(const TensorInfo& t) {
    FlatTensor f;
    f.name = t.name;
    f.dtype = t.scalar_type;
    f.shape = t.shape;
    f.nbytes = t.nbytes();
    f.xxh3 = t.xxh3;
    return f;
  }

  // The version-2 header of a plain stream of `tensors` (in data order) with
  // this file's tree and metadata, less what only this file's layout needs:
  // ackpt.codec and ackpt.refs (version and checksums are written anew).
  std::string PlainHeaderOf(const std::vector<FlatTensor>& tensors) const {
    std::map<std::string, std::string> user, internal;
    for (const auto& kv : info_.metadata) {
      if (kv.first.rfind("ackpt.", 0) != 0) {
        if (kv.first != kMetaFormat) user[kv.first] = kv.second;
      } else if (kv.first != kMetaVersion && kv.first != kMetaCodec && kv.first != kMetaTree &&
                 kv.first != kMetaChecksums && kv.first != kMetaHeaderChecksum &&
                 kv.first != kMetaReferences) {
        internal[kv.first] = kv.second;
      }
    }
    return EncodeHeader(tensors, info_.metadata.at(kMetaTree), user, internal);
  }

  // The export of an incremental checkpoint: the plain version-2 stream a
  // full save of the same state writes (every tensor in tree order sorted
  // for alignment, the same metadata without ackpt.refs and ackpt.codec),
  // each tensor's bytes read from whichever file holds them, one at a time.
  void MaterializeImpl(const std::string& out_path, Env* env) {
    std::map<std::string, const TensorInfo*> by_name;
    std::map<std::string, at::Tensor> placeholders;
    for (const auto& t : info_.tensors) by_name[t.name] = &t;
    for (const TensorInfo* t = RefInfosBegin(); t != RefInfosEnd(); ++t) by_name[t->name] = t;
    for (const auto& kv : by_name) placeholders.emplace(kv.first, at::empty({0}));
    // The tree order of the tensors, as Flatten walks the saved state.
    std::vector<FlatTensor> tensors;
    std::string tree;
    Flatten(Unflatten(info_.metadata.at(kMetaTree), placeholders, info_.path,
                      options_.max_nesting_depth),
            &tensors, &tree);
    for (FlatTensor& f : tensors) f = Described(*by_name.at(f.name));
    SortForAlignment(&tensors);
    const std::string header = PlainHeaderOf(tensors);
    AtomicWrite(env, out_path, /*fsync=*/true, [&](WritableFile* out) {
      out->Append(header.data(), header.size());
      for (const FlatTensor& f : tensors) {
        if (f.nbytes == 0) continue;
        const TensorInfo* t = by_name.at(f.name);
        ReaderImpl* holder = HolderOf(t);
        ReaderImpl* from = holder ? holder : this;
        std::map<std::string, at::Tensor> got = from->LoadHeld({from->Held(t->name)}, nullptr,
                                                               /*strict=*/true);
        out->Append(got.at(t->name).data_ptr(), f.nbytes);
      }
    });
  }

  [[noreturn]] void Corrupt(const std::string& what) const { frames_.Corrupt(what); }

  void ReadTargets(std::vector<Target> targets) const {
    format::ReadTargets(std::move(targets), *file_, info_, frames_, options_);
  }

  OpenFileRegistration registration_;
  std::unique_ptr<RandomAccessFile> file_;
  ReadOptions options_;
  Env* env_;
  FileInfo info_;
  mutable std::map<std::string, const TensorInfo*> held_by_name_;  // built on first use
  // info_.tensors, then (incremental) each reference's entry in its holder,
  // in info_.references' order.
  std::vector<TensorInfo> all_tensors_;
  // Incremental: the holders of references by file name, and each
  // reference's holder (in info_.references' order).
  std::map<std::string, std::unique_ptr<ReaderImpl>> holders_;
  std::vector<ReaderImpl*> ref_holders_;
  FrameReader frames_{file_.get(), &info_, &options_};
};

}  // namespace

}  // namespace format

std::unique_ptr<CheckpointReader> CheckpointReader::Open(const std::string& path,
                                                         const ReadOptions& options, Env* env) {
  return format::Guard(path, "opening", [&]() -> std::unique_ptr<CheckpointReader> {
    return std::make_unique<format::ReaderImpl>(env->NewRandomAccessFile(path), options, env,
                                                /*resolve_references=*/true);
  });
}

std::map<std::string, at::Tensor> FlattenTensors(const StateDict& state) {
  std::vector<format::FlatTensor> flat;
  std::string tree;
  format::Flatten(state, &flat, &tree);
  std::map<std::string, at::Tensor> out;
  for (auto& t : flat) out.emplace(std::move(t.name), std::move(t.tensor));
  return out;
}

StateDict ReadStateDict(const std::string& path, const ReadOptions& options, Env* env) {
  return CheckpointReader::Open(path, options, env)->ReadStateDict();
}

}  // namespace ackpt
