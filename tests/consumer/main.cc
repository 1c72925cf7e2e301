#include <ATen/ATen.h>
#include <ackpt/ackpt.h>

#include <cstdio>

int main(int argc, char** argv) {
  const std::string dir = argc > 1 ? argv[1] : ".";
  ackpt::StateDict state{{"w", at::arange(12, at::kFloat).reshape({3, 4})}, {"step", 7}};
  const std::string path = ackpt::JoinPath(dir, ackpt::CheckpointFileName("consumer", 7, true));
  ackpt::WriteStateDict(state, path);
  ackpt::StateDict back = ackpt::ReadStateDict(path);
  if (!ackpt::ExactlyEqual(state, back)) {
    std::fprintf(stderr, "consumer: round trip mismatch\n");
    return 1;
  }
  std::printf("consumer: find_package(ackpt) works; round trip of %s ok\n", path.c_str());
  return 0;
}
