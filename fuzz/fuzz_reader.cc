// The whole reader (CheckpointReader: Open, ReadStateDict, Verify) over an
// in-memory Env. Input: a whole file, plain or compressed.
#include <ATen/ATen.h>

#include <string>

#include "ackpt/format.h"
#include "fuzz_util.h"
#include "mem_env.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static auto* env = new ackpt::testing::MemEnv();
  env->Put("/fuzz/ckpt", std::string(reinterpret_cast<const char*>(data), size));
  ackpt::ReadOptions options;
  options.threads = 1;
  options.max_header_bytes = 1 << 20;
  options.max_tensors = 4096;
  options.max_frames = 1 << 16;
  ackpt::fuzz::ExpectOnlyAckptErrors([&] {
    auto reader = ackpt::CheckpointReader::Open("/fuzz/ckpt", options, env);
    // Tensors are allocated from header sizes before their frames are read
    // (a compressed file may legitimately expand ~32000x); keep the fuzzer's
    // memory small rather than exercise the allocator.
    if (reader->info().logical_bytes > (64u << 20)) return;
    ackpt::fuzz::ExpectOnlyAckptErrors([&] { reader->Verify(); });
    reader->ReadStateDict();
  });
  return 0;
}
