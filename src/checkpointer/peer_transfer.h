// Moving whole files between ranks over a c10d ProcessGroup, for peer
// replication of checkpoint parts (issue 25). Internal: not public API.
//
// The wire protocol of one stream (sender -> receiver), all on one Gloo tag
// (a point-to-point pair matches messages of one tag in order):
//   1. header:  int64[3] {size, chunk_bytes, status}; status != 0 (the
//      sender could not open its file) ends the stream there, size is then 0.
//   2. chunks:  ceil(size / chunk_bytes) byte messages, each chunk_bytes long
//      but the last; both sides know every length from the header.
//   3. trailer: int64[2] {XXH3-64 of the bytes sent, status}; status != 0:
//      reading the file failed part way (the chunks after the failure were
//      zeros, sent only to keep the receiver in step).
//
// Failures are carried in the stream where they can be, so both sides
// finish the same messages and the pair stays usable: a sender that cannot
// read says so in the header or the trailer; a receiver whose write fails
// keeps receiving (and discarding) to the end. Only a dead or absent peer
// (a Gloo timeout or connection error), a header over the size cap or a
// chunk_bytes that differs between the two sides stops a stream early;
// the peer then times out too, and messages of that tag may be left in
// flight: do not reuse the tag on that group after such a failure.
//
// Tags: the caller's tag t (0 <= t <= kMaxPeerTransferTag) maps to Gloo
// tags 2t (the file streams) and 2t+1 (ShareFile's "want" flags). Gloo's
// point-to-point tags are a space of their own: collectives on the same
// group never match them. Exchanges with different tags may run at the
// same time on one group, from different threads.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <torch/csrc/distributed/c10d/ProcessGroup.hpp>
#include <torch/csrc/distributed/c10d/Store.hpp>

#include "ackpt/env.h"

namespace ackpt {

// The largest caller tag: 2t + 1 must fit in an int.
inline constexpr int kMaxPeerTransferTag = 0x3fffffff;

// A process group for checkpoint traffic only (never the training group), so
// that background transfers cannot interleave with the trainer's
// collectives: Gloo, with its own threads, over PrefixStore(prefix, store).
// hostname: the address of the Gloo device ("" = this host's name, as
// ProcessGroupGloo::createDefaultDevice). timeout_seconds bounds the
// rendezvous and is the group's default for every operation. Throws
// ackpt::Error (kTimedOut when peers did not show up in time, kIOError for
// other failures, kInvalidArgument for a bad rank/world) naming the prefix.
c10::intrusive_ptr<c10d::ProcessGroup> CreateCheckpointGroup(
    const c10::intrusive_ptr<c10d::Store>& store, const std::string& prefix, int rank, int world,
    const std::string& hostname, double timeout_seconds);

struct PeerTransferOptions {
  c10::intrusive_ptr<c10d::ProcessGroup> group;
  Env* env = nullptr;                      // all file I/O goes through it (nullptr: Env::Default())
  size_t chunk_bytes = 16 << 20;           // bytes per message; a stream holds one buffer of it per
                                           // direction. Must be the same on both sides of a stream.
  bool fsync = true;                       // of the received file and its directory
  double timeout_seconds = 300;            // bounds each wait for one message, not a whole transfer
  uint64_t max_bytes = uint64_t{1} << 40;  // a receiver refuses a larger announced size
};

// Sends the file at send_path to rank `to` and at the same time receives the
// file rank `from` sends, written atomically at recv_path (AtomicWrite: temp
// file next to it, fsync, rename, directory fsync). Either side may be
// skipped: to = -1 or from = -1. Sends and receives are posted together and
// waited on together, one message per direction at a time, so a ring (every
// rank sends to r + k and receives from r - k) cannot deadlock; to == from
// (a pair swapping files) works too. Returns the bytes received.
//
// On any failure (the peer gone: a Gloo timeout; an I/O error on either
// side; a size or XXH3-64 mismatch) throws ackpt::Error naming the peer
// rank, the tag, the path and why, after the direction that did not fail
// has finished; the temp file is removed and recv_path is untouched (also
// when only the send failed). Code: kTimedOut if a peer timed out, else
// that of the first failure (kNotFound for a missing send_path, kIOError,
// kCorruption for a checksum mismatch).
uint64_t ExchangeFiles(const PeerTransferOptions& o, const std::string& send_path, int to,
                       const std::string& recv_path, int from, int tag);

// Collective over o.group: every rank calls it with the same `holder` (the
// rank that has the file) and tag. Every rank but the holder first sends
// the holder its `want` flag (point-to-point on Gloo tag 2t+1, so it does
// not take a slot in the group's collective sequence and concurrent
// ShareFiles with different tags are safe); then the holder sends the file
// at `path` to every rank that wants it, at `dest_path` on that rank
// (atomic as in ExchangeFiles). The holder reads each chunk once and posts
// it to all wanting ranks together: it sends W x size bytes for W wanting
// ranks (plus 24 + 16 bytes of header and trailer each); every other rank
// sends 8 bytes (its flag). The holder's `want` and dest_path, and the
// non-holders' `path`, are ignored. A wanting rank that fails (timeout) is
// dropped and the others still get the file; the holder then throws naming
// it. Returns the bytes received on this rank (0 on the holder and on
// ranks that did not want the file).
uint64_t ShareFile(const PeerTransferOptions& o, int holder, const std::string& path, bool want,
                   const std::string& dest_path, int tag);

}  // namespace ackpt
