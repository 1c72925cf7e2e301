// ACKPT_EXPORT marks ackpt's public API. The library is built with
// -fvisibility=hidden, so a shared libackpt exports exactly what carries this
// macro and nothing of its internals (zstd's ZSTDLIB_API and leveldb's
// LEVELDB_EXPORT are the model).
#pragma once

#if defined(_WIN32)
#define ACKPT_EXPORT
#else
#define ACKPT_EXPORT __attribute__((visibility("default")))
#endif
