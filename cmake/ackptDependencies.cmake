# Finds ackpt's dependencies; shared by the build and by the installed
# ackptConfig.cmake so a consumer gets exactly the same targets.
include(CMakeFindDependencyMacro)

set(THREADS_PREFER_PTHREAD_FLAG ON)
find_dependency(Threads)
# Debian's libtorch-dev ships TorchConfig.cmake under the multiarch cmake dir.
find_dependency(Torch)
find_dependency(zstd)
find_dependency(spdlog)

# Header-only dependencies used inside the library only: needed to build
# ackpt, not to use an installed copy (the exported target drops them).
if(NOT ACKPT_BUILDING_FROM_SOURCE)
  return()
endif()
find_dependency(nlohmann_json)
# Standalone Asio and xxHash are header-only here (xxHash via XXH_INLINE_ALL).
if(NOT TARGET ackpt_asio)
  find_path(ACKPT_ASIO_INCLUDE_DIR asio.hpp REQUIRED)
  add_library(ackpt_asio INTERFACE IMPORTED)
  set_target_properties(ackpt_asio PROPERTIES
    INTERFACE_INCLUDE_DIRECTORIES "${ACKPT_ASIO_INCLUDE_DIR}"
    INTERFACE_COMPILE_DEFINITIONS "ASIO_STANDALONE;ASIO_NO_DEPRECATED")
endif()
if(NOT TARGET ackpt_xxhash)
  find_path(ACKPT_XXHASH_INCLUDE_DIR xxhash.h REQUIRED)
  add_library(ackpt_xxhash INTERFACE IMPORTED)
  set_target_properties(ackpt_xxhash PROPERTIES INTERFACE_INCLUDE_DIRECTORIES "${ACKPT_XXHASH_INCLUDE_DIR}")
endif()
