// A second process for dir_ownership_test: owns a checkpoint directory and
// saves into it until told how long, or reads it.
//
//   dir_owner_worker write DIR SECONDS READY_FILE
//     takes DIR as its writer (keep_last = 3), touches READY_FILE, saves every
//     ~10 ms for SECONDS, then waits; exit 0 iff every save succeeded.
#include <chrono>
#include <cstdio>
#include <fstream>
#include <string>
#include <thread>

#include "ackpt/checkpointer.h"
#include "ackpt/error.h"
#include "test_util.h"

int main(int argc, char** argv) {
  if (argc != 5 || std::string(argv[1]) != "write") {
    std::fprintf(stderr, "usage: %s write DIR SECONDS READY_FILE\n", argv[0]);
    return 2;
  }
  try {
    ackpt::DefaultCheckpointerArguments a;
    a.save_dir = argv[2];
    a.model_state_save_dir = "";
    a.log_level = "ERROR";
    a.writer_threads = 1;
    a.chunk_size = 64 << 10;
    a.retention.keep_last = 3;
    ackpt::DefaultCheckpointer ck(a);
    std::ofstream(argv[4]) << "ready\n";
    const auto end = std::chrono::steady_clock::now() + std::chrono::duration<double>(std::stod(argv[3]));
    int64_t index = 0;
    while (std::chrono::steady_clock::now() < end) {
      ackpt::Checkpoint c;
      c.module_interface_state = ackpt::testing::SampleState(static_cast<int>(index % 7));
      c.trainer_state.set("index", index);
      ck.save(c, ++index);
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    ck.wait();
    std::printf("saves %lld failed %llu\n", static_cast<long long>(index),
                static_cast<unsigned long long>(ck.counters().saves_failed));
    return ck.counters().saves_failed == 0 ? 0 : 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "dir_owner_worker: %s\n", e.what());
    return 1;
  }
}
