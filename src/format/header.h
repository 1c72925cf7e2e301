// The header region of a checkpoint: safetensors' 8-byte length and JSON
// header with ackpt's metadata and header checksum (docs/FORMAT.md, "Header"),
// and the order tensors take in the file.
#pragma once

#include <map>
#include <string>
#include <vector>

#include "ackpt/format.h"
#include "format/flatten.h"

namespace ackpt {
namespace format {

// Orders tensors for the file: by element size, largest first (stable), so
// every tensor is aligned to its element size when the data start is 8-aligned.
void SortForAlignment(std::vector<FlatTensor>* tensors);
// The complete header region: 8-byte length, compact JSON, space padding to a
// multiple of 8, with ackpt's metadata and header checksum filled in.
// internal_metadata: extra "ackpt.*" entries from ackpt's own layers.
std::string EncodeHeader(const std::vector<FlatTensor>& tensors, const std::string& tree_json,
                         const std::map<std::string, std::string>& user_metadata,
                         const std::map<std::string, std::string>& internal_metadata = {});
// The hex64 header checksum a region from EncodeHeader holds ("" if none).
std::string HeaderChecksumOf(const std::string& region);
// Parses and validates the JSON header of a stream whose data section is
// data_bytes long; `header_region` is the full region (length prefix included).
// Streams the JSON (SAX) into `info`, so memory stays a small multiple of the
// header size; options' limits (tensors, nesting) apply. Throws kCorruption
// (kUnsupported for a dtype or format version this build cannot read).
void DecodeHeader(const std::string& header_region, uint64_t data_bytes, const std::string& path,
                  FileInfo* info, const ReadOptions& options = {});
// The value of ackpt.refs for `refs` (name, file and xxh3 of each):
// {"file": {"name": "hex64", ...}, ...}, compact, files and names in byte order.
std::string EncodeReferences(const std::vector<TensorReference>& refs);
// The files an ackpt.refs entry of `metadata` names, each once, in byte
// order (none without references). Throws kCorruption naming `path`.
std::vector<std::string> ReferencedFiles(const std::map<std::string, std::string>& metadata,
                                         const std::string& path);
// Throws kInvalidArgument for limits that are zero or negative.
void ValidateReadOptions(const ReadOptions& options);

}  // namespace format
}  // namespace ackpt
