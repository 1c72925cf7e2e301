// The safetensors header decoder (DecodeHeader). Input: 4 bytes of data-section
// size (u32 LE), then the JSON header text.
#include <cstring>
#include <string>

#include "format/header.h"
#include "fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 4) return 0;
  uint32_t d;
  std::memcpy(&d, data, 4);
  const std::string json(reinterpret_cast<const char*>(data) + 4, size - 4);
  std::string region(8, '\0');
  const uint64_t n = json.size();
  for (int i = 0; i < 8; ++i) region[static_cast<size_t>(i)] = static_cast<char>(n >> (8 * i));
  region += json;
  ackpt::ReadOptions options;
  options.max_tensors = 4096;
  options.max_nesting_depth = 64;
  ackpt::fuzz::ExpectOnlyAckptErrors([&] {
    ackpt::FileInfo info;
    ackpt::format::DecodeHeader(region, d, "fuzz", &info, options);
    // What the decoder accepts, the reader relies on: contiguous, in bounds.
    uint64_t expected = 0;
    for (const auto& t : info.tensors) {
      ackpt::fuzz::Check(t.begin == expected && t.end >= t.begin, "tensors are contiguous");
      expected = t.end;
    }
    ackpt::fuzz::Check(expected == d, "tensors cover the data section");
  });
  return 0;
}
