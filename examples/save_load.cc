// Saves a small model-like state with ackpt, loads it back and prints what happened.
//
//   ackpt_example_save_load [DIR]     (default DIR: ./ackpt_example)
#include <torch/torch.h>

#include <chrono>
#include <cstdio>

#include "ackpt/ackpt.h"

int main(int argc, char** argv) {
  const std::string dir = argc > 1 ? argv[1] : "ackpt_example";
  ackpt::Env::Default()->CreateDirs(dir);
  torch::manual_seed(0);

  // A two-layer MLP's parameters plus a bit of trainer state.
  torch::nn::Sequential model(torch::nn::Linear(256, 512), torch::nn::ReLU(),
                              torch::nn::Linear(512, 10));
  ackpt::StateDict weights;
  for (const auto& p : model->named_parameters()) weights.set(p.key(), p.value().detach());
  ackpt::StateDict state;
  state.set("model", weights);
  state.set("trainer", ackpt::StateDict{{"epoch", 3}, {"lr", 0.001}, {"run", "example"}});

  ackpt::StateDict last_loaded;
  for (auto compression : {ackpt::Compression::kNone, ackpt::Compression::kZstd}) {
    ackpt::WriteOptions options;
    options.compression = compression;
    const bool zstd = compression == ackpt::Compression::kZstd;
    const std::string path = ackpt::JoinPath(dir, ackpt::CheckpointFileName("example", 3, zstd));

    auto t0 = std::chrono::steady_clock::now();
    ackpt::WriteResult written = ackpt::WriteStateDict(state, path, options);
    auto t1 = std::chrono::steady_clock::now();
    ackpt::StateDict loaded = ackpt::ReadStateDict(path);
    auto t2 = std::chrono::steady_clock::now();

    std::string why;
    const bool same = ackpt::ExactlyEqual(state, loaded, &why);
    std::printf(
        "%-5s %-40s %8llu tensor bytes -> %8llu on disk  write %6.1f ms  read %6.1f ms  %s\n",
        zstd ? "zstd" : "plain", path.c_str(),
        static_cast<unsigned long long>(written.tensor_bytes),
        static_cast<unsigned long long>(written.file_bytes),
        std::chrono::duration<double, std::milli>(t1 - t0).count(),
        std::chrono::duration<double, std::milli>(t2 - t1).count(),
        same ? "round trip exact" : ("MISMATCH: " + why).c_str());
    if (!same) return 1;
    last_loaded = loaded;
  }
  std::printf("loaded trainer state: epoch=%lld lr=%g run=%s\n",
              static_cast<long long>(last_loaded.at("trainer").dict().at("epoch").to_int()),
              last_loaded.at("trainer").dict().at("lr").to_double(),
              last_loaded.at("trainer").dict().at("run").str().c_str());
  std::printf("try: ./build/tools/ackpt inspect %s/example_3.safetensors.zst\n", dir.c_str());
  return 0;
}
