// Per-thread zstd contexts and scratch buffers (format/zstd_context.h).
#define ZSTD_STATIC_LINKING_ONLY  // ZSTD_d_forceIgnoreChecksum, ZSTD_c_blockDelimiters
#include "format/zstd_context.h"

#include <string>

#include "ackpt/error.h"

namespace ackpt {
namespace format {

namespace {

// A thread keeps its buffers for the next frame up to this size.
constexpr size_t kKeepBuffer = 64 << 20;

struct CCtxDeleter {
  void operator()(ZSTD_CCtx* c) const { ZSTD_freeCCtx(c); }
};

ZSTD_CCtx* NewCCtx() {
  ZSTD_CCtx* c = ZSTD_createCCtx();
  if (c == nullptr) throw Error(Error::Code::kIOError, "ZSTD_createCCtx failed (out of memory)");
  return c;
}

}  // namespace

void CheckZstd(size_t rc, const char* call) {
  if (ZSTD_isError(rc))
    throw Error(Error::Code::kIOError, std::string(call) + ": " + ZSTD_getErrorName(rc));
}

ZSTD_CCtx* ThreadFrameCCtx(int level, bool checksum) {
  thread_local std::unique_ptr<ZSTD_CCtx, CCtxDeleter> c(NewCCtx());
  ZSTD_CCtx* cctx = c.get();
  CheckZstd(ZSTD_CCtx_reset(cctx, ZSTD_reset_session_and_parameters), "ZSTD_CCtx_reset");
  CheckZstd(ZSTD_CCtx_setParameter(cctx, ZSTD_c_compressionLevel, level),
            "ZSTD_c_compressionLevel");
  CheckZstd(ZSTD_CCtx_setParameter(cctx, ZSTD_c_checksumFlag, checksum ? 1 : 0),
            "ZSTD_c_checksumFlag");
  CheckZstd(ZSTD_CCtx_setParameter(cctx, ZSTD_c_contentSizeFlag, 1), "ZSTD_c_contentSizeFlag");
  return cctx;
}

ZSTD_CCtx* ThreadHuffmanCCtx() {
  thread_local std::unique_ptr<ZSTD_CCtx, CCtxDeleter> c([] {
    ZSTD_CCtx* x = NewCCtx();
    CheckZstd(ZSTD_CCtx_setParameter(x, ZSTD_c_compressionLevel, 1), "ZSTD_c_compressionLevel");
    CheckZstd(ZSTD_CCtx_setParameter(x, ZSTD_c_blockDelimiters, ZSTD_sf_explicitBlockDelimiters),
              "ZSTD_c_blockDelimiters");
    CheckZstd(ZSTD_CCtx_setParameter(x, ZSTD_c_checksumFlag, 0), "ZSTD_c_checksumFlag");
    return x;
  }());
  return c.get();
}

ZSTD_DCtx* ThreadDCtx(bool verify_checksums) {
  thread_local std::unique_ptr<ZSTD_DCtx, DCtxDeleter> d(ZSTD_createDCtx());
  if (!d) throw Error(Error::Code::kIOError, "ZSTD_createDCtx failed (out of memory)");
  ZSTD_DCtx_setParameter(d.get(), ZSTD_d_forceIgnoreChecksum,
                         verify_checksums ? ZSTD_d_validateChecksum : ZSTD_d_ignoreChecksum);
  return d.get();
}

std::unique_ptr<ZSTD_DCtx, DCtxDeleter> NewDCtx() {
  std::unique_ptr<ZSTD_DCtx, DCtxDeleter> d(ZSTD_createDCtx());
  if (!d) throw Error(Error::Code::kIOError, "ZSTD_createDCtx failed (out of memory)");
  return d;
}

uint8_t* ThreadBuffer::Get(size_t n) {
  if (n > cap_) {
    data_.reset();
    data_.reset(new uint8_t[n]);
    cap_ = n;
  }
  return data_.get();
}

void ThreadBuffer::Trim() {
  if (cap_ > kKeepBuffer) {
    data_.reset();
    cap_ = 0;
  }
}

ThreadBuffer& ThreadScratch(BufferUse use) {
  thread_local ThreadBuffer buffers[static_cast<size_t>(BufferUse::kGather) + 1];
  return buffers[static_cast<size_t>(use)];
}

}  // namespace format
}  // namespace ackpt
