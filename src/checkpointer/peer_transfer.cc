#include "checkpointer/peer_transfer.h"

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <memory>
#include <new>
#include <optional>
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <utility>
#include <vector>

#include "ackpt/error.h"
#include "format/checksum.h"
#include "io/atomic_file.h"

namespace ackpt {

namespace {

// Header and trailer status words.
constexpr int64_t kStatusOk = 0;
constexpr int64_t kStatusMissing = 1;     // the sender has no file at its path
constexpr int64_t kStatusReadFailed = 2;  // opening or reading it failed

using WorkPtr = c10::intrusive_ptr<c10d::Work>;

struct Failure {
  Error::Code code;
  std::string what;
};

bool LooksLikeTimeout(std::string msg) {
  std::transform(msg.begin(), msg.end(), msg.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return msg.find("timed out") != std::string::npos || msg.find("timeout") != std::string::npos;
}

// The exception being handled as a Failure: ackpt's keep their code; Gloo's
// and c10d's (std::runtime_error, c10::Error) are kTimedOut when they say
// so, kIOError otherwise. Call from a catch block only.
Failure CurrentFailure(const std::string& context) {
  try {
    throw;
  } catch (const Error& e) {
    return {e.code(), context + ": " + e.message()};
  } catch (const c10::Error& e) {
    const std::string msg = e.what_without_backtrace();
    return {LooksLikeTimeout(msg) ? Error::Code::kTimedOut : Error::Code::kIOError,
            context + ": " + msg};
  } catch (const std::bad_alloc&) {
    return {Error::Code::kIOError, context + ": out of memory"};
  } catch (const std::exception& e) {
    const std::string msg = e.what();
    return {LooksLikeTimeout(msg) ? Error::Code::kTimedOut : Error::Code::kIOError,
            context + ": " + msg};
  } catch (...) {
    return {Error::Code::kIOError, context + ": unknown exception"};
  }
}

std::chrono::milliseconds WaitTimeout(const PeerTransferOptions& o) {
  // 0 would mean "the group's default" to c10d.
  return std::chrono::milliseconds(std::max<int64_t>(1, std::llround(o.timeout_seconds * 1000)));
}

// Waits for one posted message; false means c10d reported it aborted.
void Wait(const WorkPtr& work, std::chrono::milliseconds timeout) {
  if (!work->wait(timeout)) throw Error(Error::Code::kIOError, "the operation was aborted");
}

uint64_t ChunkCount(uint64_t size, uint64_t chunk) { return (size + chunk - 1) / chunk; }

// "the header", "chunk 3 of 4", "the trailer": message `msg` of a stream of
// `chunks` chunks, for error messages.
std::string MessageName(uint64_t msg, uint64_t chunks) {
  if (msg == 0) return "the header";
  if (msg <= chunks) return "chunk " + std::to_string(msg) + " of " + std::to_string(chunks);
  return "the trailer";
}

// The outgoing stream: one file to one or more ranks, one message at a
// time. Never throws after construction: failures are recorded, and a
// destination whose message fails is dropped.
class Sender {
 public:
  Sender(const PeerTransferOptions& o, Env* env, const std::string& path, std::vector<int> dests)
      : o_(o), dests_(std::move(dests)) {
    header_ = at::empty({3}, at::kLong);
    trailer_ = at::empty({2}, at::kLong);
    try {
      file_ = env->NewRandomAccessFile(path);
      size_ = file_->Size();
      buf_ = at::empty({static_cast<int64_t>(std::min<uint64_t>(o.chunk_bytes, size_))}, at::kByte);
    } catch (...) {
      Failure f = CurrentFailure("opening it");
      status_ = f.code == Error::Code::kNotFound ? kStatusMissing : kStatusReadFailed;
      size_ = 0;
      file_.reset();
      failures_.push_back(std::move(f));
    }
    chunks_ = ChunkCount(size_, o.chunk_bytes);
  }

  bool done() const {
    if (dests_.empty()) return true;
    if (status_ != kStatusOk) return msg_ >= 1;  // the header said "no file": nothing follows
    return msg_ > chunks_ + 1;
  }
  const std::vector<int>& dests() const { return dests_; }
  const std::vector<Failure>& failures() const { return failures_; }
  std::string message_name() const { return MessageName(msg_, chunks_); }

  // The tensor of the current message (reads the chunk, if it is one).
  at::Tensor Next() {
    if (msg_ == 0) {
      int64_t* h = header_.data_ptr<int64_t>();
      h[0] = static_cast<int64_t>(size_);
      h[1] = static_cast<int64_t>(o_.chunk_bytes);
      h[2] = status_;
      return header_;
    }
    if (msg_ <= chunks_) {
      const uint64_t offset = (msg_ - 1) * o_.chunk_bytes;
      const uint64_t n = std::min<uint64_t>(o_.chunk_bytes, size_ - offset);
      at::Tensor chunk = buf_.narrow(0, 0, static_cast<int64_t>(n));
      void* dst = chunk.data_ptr();
      if (!read_failed_) {
        try {
          file_->Read(offset, n, dst);
        } catch (...) {
          failures_.push_back(CurrentFailure("reading at byte " + std::to_string(offset)));
          read_failed_ = true;
        }
      }
      // After a read failure the rest goes out as zeros, only to keep the
      // receivers in step; the trailer tells them to discard it.
      if (read_failed_) std::memset(dst, 0, n);
      hash_.Update(dst, n);
      return chunk;
    }
    int64_t* t = trailer_.data_ptr<int64_t>();
    const uint64_t digest = hash_.Digest();
    std::memcpy(&t[0], &digest, sizeof(digest));
    t[1] = read_failed_ ? kStatusReadFailed : kStatusOk;
    return trailer_;
  }

  void Advance() { ++msg_; }

  void Drop(int dest, Failure f) {
    dests_.erase(std::remove(dests_.begin(), dests_.end(), dest), dests_.end());
    failures_.push_back(std::move(f));
  }

 private:
  const PeerTransferOptions& o_;
  std::vector<int> dests_;
  std::unique_ptr<RandomAccessFile> file_;
  uint64_t size_ = 0;
  uint64_t chunks_ = 0;
  int64_t status_ = kStatusOk;
  bool read_failed_ = false;
  uint64_t msg_ = 0;  // 0: header, 1..chunks_: chunks, chunks_ + 1: trailer
  at::Tensor header_, trailer_, buf_;
  format::Xxh3Stream hash_;
  std::vector<Failure> failures_;
};

// The incoming stream from one rank. Writes to `file` while it is set and
// no write failed; otherwise receives and discards, so the sender finishes.
class Receiver {
 public:
  Receiver(const PeerTransferOptions& o, int from) : o_(o), from_(from) {
    header_ = at::empty({3}, at::kLong);
    trailer_ = at::empty({2}, at::kLong);
  }

  WritableFile* file = nullptr;

  int from() const { return from_; }
  bool done() const { return done_; }
  uint64_t bytes() const { return received_; }
  const std::optional<Failure>& failure() const { return failure_; }
  std::string message_name() const { return MessageName(msg_, chunks_); }
  bool started() const { return msg_ > 0 || done_; }

  at::Tensor Next() {
    if (msg_ == 0) return header_;
    if (msg_ <= chunks_) {
      const uint64_t offset = (msg_ - 1) * o_.chunk_bytes;
      return buf_.narrow(0, 0,
                         static_cast<int64_t>(std::min<uint64_t>(o_.chunk_bytes, size_ - offset)));
    }
    return trailer_;
  }

  // After the current message arrived.
  void Consume() {
    if (msg_ == 0) {
      ConsumeHeader();
    } else if (msg_ <= chunks_) {
      at::Tensor chunk = Next();
      const void* data = chunk.data_ptr();
      const size_t n = static_cast<size_t>(chunk.numel());
      hash_.Update(data, n);
      received_ += n;
      if (file != nullptr && !write_failed_) {
        try {
          file->Append(data, n);
        } catch (...) {
          WriteFailed(CurrentFailure("writing " + MessageName(msg_, chunks_)));
        }
      }
    } else {
      ConsumeTrailer();
    }
    ++msg_;
  }

  // The stream cannot go on (the peer timed out, or the header is unusable).
  void Stop(Failure f) {
    done_ = true;
    if (!failure_) failure_ = std::move(f);
  }
  // Writing failed: keep receiving, without writing.
  void WriteFailed(Failure f) {
    write_failed_ = true;
    if (!failure_) failure_ = std::move(f);
  }

 private:
  void ConsumeHeader() {
    const int64_t* h = header_.data_ptr<int64_t>();
    const std::string peer = "rank " + std::to_string(from_);
    if (h[2] == kStatusMissing) {
      return Stop({Error::Code::kNotFound, peer + " has no file to send"});
    }
    if (h[2] != kStatusOk) {
      return Stop({Error::Code::kIOError, peer + " could not open the file it was to send"});
    }
    if (h[0] < 0 || static_cast<uint64_t>(h[0]) > o_.max_bytes) {
      return Stop({Error::Code::kCorruption, peer + " announced " + std::to_string(h[0]) +
                                                 " bytes, over the cap of " +
                                                 std::to_string(o_.max_bytes)});
    }
    if (h[1] != static_cast<int64_t>(o_.chunk_bytes)) {
      return Stop({Error::Code::kInvalidArgument,
                   peer + " sends chunks of " + std::to_string(h[1]) + " bytes, this rank's are " +
                       std::to_string(o_.chunk_bytes) + " (chunk_bytes must be equal)"});
    }
    size_ = static_cast<uint64_t>(h[0]);
    chunks_ = ChunkCount(size_, o_.chunk_bytes);
    try {
      buf_ =
          at::empty({static_cast<int64_t>(std::min<uint64_t>(o_.chunk_bytes, size_))}, at::kByte);
    } catch (...) {
      Stop(CurrentFailure("allocating the receive buffer"));
    }
  }

  void ConsumeTrailer() {
    done_ = true;
    const int64_t* t = trailer_.data_ptr<int64_t>();
    const std::string peer = "rank " + std::to_string(from_);
    if (t[1] != kStatusOk) {
      if (!failure_)
        failure_ = Failure{Error::Code::kIOError, peer + " failed reading the file it was sending"};
      return;
    }
    uint64_t sent;
    std::memcpy(&sent, &t[0], sizeof(sent));
    const uint64_t got = hash_.Digest();
    if (received_ != size_) {
      if (!failure_)
        failure_ =
            Failure{Error::Code::kCorruption, std::to_string(received_) + " bytes arrived, " +
                                                  peer + " announced " + std::to_string(size_)};
    } else if (sent != got && !failure_) {
      failure_ = Failure{Error::Code::kCorruption,
                         "XXH3-64 of the " + std::to_string(received_) + " bytes received is " +
                             format::Hex64(got) + ", " + peer + " sent " + format::Hex64(sent)};
    }
  }

  const PeerTransferOptions& o_;
  int from_;
  bool done_ = false;
  bool write_failed_ = false;
  uint64_t size_ = 0;
  uint64_t chunks_ = 0;
  uint64_t msg_ = 0;
  uint64_t received_ = 0;
  at::Tensor header_, trailer_, buf_;
  format::Xxh3Stream hash_;
  std::optional<Failure> failure_;
};

// Runs both streams to their end, one message per direction at a time:
// every send of the message and the receive are posted before any is
// waited on, so peers that send to each other (a ring, a swap) never wait
// on one another. Resumable: called again, it goes on where it stopped.
void Run(const PeerTransferOptions& o, Sender* tx, Receiver* rx, int gtag) {
  const std::chrono::milliseconds timeout = WaitTimeout(o);
  auto send_context = [&](int d) {
    return "sending " + tx->message_name() + " to rank " + std::to_string(d);
  };
  auto recv_context = [&](int) { return "waiting for " + rx->message_name(); };
  while ((tx != nullptr && !tx->done()) || (rx != nullptr && !rx->done())) {
    std::vector<std::pair<int, WorkPtr>> sends;
    std::vector<std::pair<int, Failure>> dropped;
    WorkPtr recv;
    if (tx != nullptr && !tx->done()) {
      at::Tensor t;
      try {
        t = tx->Next();
      } catch (...) {
        // Next() records its own read failures; this is only for c10 errors.
        for (int d : tx->dests()) dropped.emplace_back(d, CurrentFailure(send_context(d)));
      }
      if (t.defined()) {
        for (int d : tx->dests()) {
          try {
            std::vector<at::Tensor> v{t};
            sends.emplace_back(d, o.group->send(v, d, gtag));
          } catch (...) {
            dropped.emplace_back(d, CurrentFailure(send_context(d)));
          }
        }
      }
    }
    if (rx != nullptr && !rx->done()) {
      try {
        std::vector<at::Tensor> v{rx->Next()};
        recv = o.group->recv(v, rx->from(), gtag);
      } catch (...) {
        rx->Stop(CurrentFailure(recv_context(rx->from())));
      }
    }
    for (auto& s : sends) {
      try {
        Wait(s.second, timeout);
      } catch (...) {
        dropped.emplace_back(s.first, CurrentFailure(send_context(s.first)));
      }
    }
    if (recv) {
      bool arrived = false;
      try {
        Wait(recv, timeout);
        arrived = true;
      } catch (...) {
        rx->Stop(CurrentFailure(recv_context(rx->from())));
      }
      if (arrived) rx->Consume();
    }
    if (tx != nullptr) {
      for (auto& d : dropped) tx->Drop(d.first, std::move(d.second));
      if (!tx->done()) tx->Advance();
    }
  }
}

// Thrown through AtomicWrite when a stream failed, so that it removes the
// temp file; the failures themselves are in the Sender and Receiver.
struct StreamFailed {};

[[noreturn]] void ThrowFailures(const std::string& prefix, const std::vector<Failure>& failures) {
  std::string what = prefix;
  Error::Code code = failures.front().code;
  for (size_t i = 0; i < failures.size(); ++i) {
    what += (i == 0 ? ": " : "; ") + failures[i].what;
    if (failures[i].code == Error::Code::kTimedOut) code = Error::Code::kTimedOut;
  }
  throw Error(code, what);
}

void CheckTag(int tag) {
  if (tag < 0 || tag > kMaxPeerTransferTag)
    throw Error::InvalidArgument("peer transfer: tag " + std::to_string(tag) + " is outside [0, " +
                                 std::to_string(kMaxPeerTransferTag) + "]");
}

void CheckOptions(const PeerTransferOptions& o, const char* call) {
  if (!o.group) throw Error::InvalidArgument(std::string(call) + ": no process group");
  if (o.chunk_bytes == 0 || o.chunk_bytes > (uint64_t{1} << 40))
    throw Error::InvalidArgument(std::string(call) + ": chunk_bytes " +
                                 std::to_string(o.chunk_bytes) + " is not in [1, 2^40]");
  if (!(o.timeout_seconds > 0))
    throw Error::InvalidArgument(std::string(call) + ": timeout_seconds must be positive");
}

void CheckPeer(const PeerTransferOptions& o, int peer, const char* what) {
  const int rank = o.group->getRank();
  const int world = o.group->getSize();
  if (peer != -1 && (peer < 0 || peer >= world || peer == rank))
    throw Error::InvalidArgument("peer transfer: " + std::string(what) + " rank " +
                                 std::to_string(peer) + " is not -1 or another rank of 0.." +
                                 std::to_string(world - 1) + " (this rank is " +
                                 std::to_string(rank) + ")");
}

// One send stream (to zero or more ranks) and one receive stream (from = -1:
// none) at once. The common core of ExchangeFiles and ShareFile.
uint64_t Transfer(const PeerTransferOptions& o, const std::string& send_path,
                  const std::vector<int>& dests, const std::string& recv_path, int from, int tag) {
  Env* env = o.env != nullptr ? o.env : Env::Default();
  const int gtag = tag * 2;
  std::optional<Sender> tx;
  std::optional<Receiver> rx;
  if (!dests.empty()) tx.emplace(o, env, send_path, dests);
  if (from >= 0) rx.emplace(o, from);
  Sender* txp = tx ? &*tx : nullptr;
  Receiver* rxp = rx ? &*rx : nullptr;

  auto failed = [&] { return (rx && rx->failure()) || (tx && !tx->failures().empty()); };
  std::optional<Failure> commit_failure;
  if (rx) {
    try {
      AtomicWrite(env, recv_path, o.fsync, [&](WritableFile* f) {
        rx->file = f;
        Run(o, txp, rxp, gtag);
        rx->file = nullptr;
        if (failed()) throw StreamFailed{};
      });
    } catch (const StreamFailed&) {
      // Recorded in tx / rx; AtomicWrite removed the temp file.
    } catch (...) {
      // Creating the temp file (before any message), or the fsync, close or
      // rename after the last: finish the streams (discarding what arrives)
      // so that the peers do not wait on this rank.
      rx->file = nullptr;
      commit_failure = CurrentFailure(rx->started() ? "committing it" : "creating its temp file");
      Run(o, txp, rxp, gtag);
    }
  } else {
    Run(o, txp, rxp, gtag);
  }

  std::vector<Failure> all;
  if (rx) {
    const std::string ctx = "receiving '" + recv_path + "' from rank " + std::to_string(from);
    if (rx->failure()) {
      all.push_back({rx->failure()->code, ctx + ": " + rx->failure()->what});
    } else if (commit_failure) {
      all.push_back({commit_failure->code, ctx + ": " + commit_failure->what});
    } else if (tx && !tx->failures().empty()) {
      all.push_back({tx->failures().front().code,
                     ctx + ": not committed, since the send failed (the file arrived intact)"});
    }
  }
  if (tx) {
    std::string to;
    for (int d : dests) to += (to.empty() ? "" : ",") + std::to_string(d);
    for (const Failure& f : tx->failures())
      all.push_back({f.code, "sending '" + send_path + "' to rank " + to + ": " + f.what});
  }
  if (!all.empty()) ThrowFailures("peer transfer (tag " + std::to_string(tag) + ")", all);
  return rx ? rx->bytes() : 0;
}

}  // namespace

c10::intrusive_ptr<c10d::ProcessGroup> CreateCheckpointGroup(
    const c10::intrusive_ptr<c10d::Store>& store, const std::string& prefix, int rank, int world,
    const std::string& hostname, double timeout_seconds) {
  const std::string what = "creating the checkpoint process group '" + prefix + "' (rank " +
                           std::to_string(rank) + " of " + std::to_string(world) + ")";
  if (!store) throw Error::InvalidArgument(what + ": no store");
  if (world < 1 || rank < 0 || rank >= world)
    throw Error::InvalidArgument(what + ": rank must be in [0, world)");
  if (!(timeout_seconds > 0)) throw Error::InvalidArgument(what + ": timeout must be positive");
  try {
    auto prefixed = c10::make_intrusive<c10d::PrefixStore>(prefix, store);
    auto opts = c10d::ProcessGroupGloo::Options::create(
        std::chrono::milliseconds(std::max<int64_t>(1, std::llround(timeout_seconds * 1000))));
    opts->devices.push_back(hostname.empty()
                                ? c10d::ProcessGroupGloo::createDefaultDevice()
                                : c10d::ProcessGroupGloo::createDeviceForHostname(hostname));
    return c10::make_intrusive<c10d::ProcessGroupGloo>(prefixed, rank, world, opts);
  } catch (...) {
    Failure f = CurrentFailure(what);
    throw Error(f.code, f.what);
  }
}

uint64_t ExchangeFiles(const PeerTransferOptions& o, const std::string& send_path, int to,
                       const std::string& recv_path, int from, int tag) {
  CheckOptions(o, "ExchangeFiles");
  CheckTag(tag);
  CheckPeer(o, to, "destination");
  CheckPeer(o, from, "source");
  std::vector<int> dests;
  if (to >= 0) dests.push_back(to);
  return Transfer(o, send_path, dests, recv_path, from, tag);
}

uint64_t ShareFile(const PeerTransferOptions& o, int holder, const std::string& path, bool want,
                   const std::string& dest_path, int tag) {
  CheckOptions(o, "ShareFile");
  CheckTag(tag);
  const int rank = o.group->getRank();
  const int world = o.group->getSize();
  if (holder < 0 || holder >= world)
    throw Error::InvalidArgument("ShareFile: holder rank " + std::to_string(holder) +
                                 " is not in 0.." + std::to_string(world - 1));
  const std::string what =
      "ShareFile (tag " + std::to_string(tag) + ", holder rank " + std::to_string(holder) + ")";
  const int flag_tag = tag * 2 + 1;
  const std::chrono::milliseconds timeout = WaitTimeout(o);

  if (rank != holder) {
    try {
      at::Tensor flag = at::empty({1}, at::kLong);
      flag.data_ptr<int64_t>()[0] = want ? 1 : 0;
      std::vector<at::Tensor> v{flag};
      Wait(o.group->send(v, holder, flag_tag), timeout);
    } catch (...) {
      Failure f = CurrentFailure(what + ": sending this rank's want flag to the holder");
      throw Error(f.code, f.what);
    }
    if (!want) return 0;
    return Transfer(o, "", {}, dest_path, holder, tag);
  }

  // The holder: every flag is posted before any is waited on.
  std::vector<std::pair<int, at::Tensor>> flags;
  std::vector<std::pair<int, WorkPtr>> works;
  std::vector<Failure> failures;
  for (int r = 0; r < world; ++r) {
    if (r == holder) continue;
    try {
      at::Tensor flag = at::empty({1}, at::kLong);
      std::vector<at::Tensor> v{flag};
      works.emplace_back(r, o.group->recv(v, r, flag_tag));
      flags.emplace_back(r, flag);
    } catch (...) {
      failures.push_back(CurrentFailure("receiving the want flag of rank " + std::to_string(r)));
    }
  }
  std::vector<int> wanting;
  for (size_t i = 0; i < works.size(); ++i) {
    const int r = works[i].first;
    try {
      Wait(works[i].second, timeout);
      if (flags[i].second.data_ptr<int64_t>()[0] != 0) wanting.push_back(r);
    } catch (...) {
      failures.push_back(CurrentFailure("receiving the want flag of rank " + std::to_string(r)));
    }
  }
  std::optional<Error> send_error;
  if (!wanting.empty()) {
    try {
      Transfer(o, path, wanting, "", -1, tag);
    } catch (const Error& e) {
      send_error = e;
    }
  }
  if (!failures.empty()) {
    if (send_error) failures.push_back({send_error->code(), send_error->message()});
    ThrowFailures(what, failures);
  }
  if (send_error) throw Error(send_error->code(), what + ": " + send_error->message());
  return 0;
}

}  // namespace ackpt
