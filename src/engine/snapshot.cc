#include "engine/snapshot.h"

#include <ATen/ATen.h>
#include <c10/core/Event.h>
#include <c10/core/StreamGuard.h>
#include <c10/core/impl/VirtualGuardImpl.h>

#include <algorithm>
#include <cstring>
#include <utility>

#include "ackpt/error.h"

namespace ackpt {
namespace engine {

namespace {
constexpr uint64_t kAlign = 64;
// Contiguous tensors are copied in pieces of this size across the pool.
constexpr uint64_t kCopyPiece = uint64_t{8} << 20;

at::Tensor StagingView(uint8_t* base, const StagedTensor& s) {
  return at::from_blob(base + s.offset, s.shape, at::TensorOptions().dtype(s.dtype));
}
}  // namespace

uint64_t PlanSnapshot(const std::vector<format::FlatTensor>& flat,
                      std::vector<StagedTensor>* staged, bool* any_cuda) {
  staged->clear();
  staged->reserve(flat.size());
  *any_cuda = false;
  uint64_t offset = 0;
  for (const auto& f : flat) {
    const at::Tensor& t = f.tensor;
    if (t.layout() != at::kStrided) {
      throw Error::Unsupported("tensor '" + f.name + "' is not dense (layout " +
                               c10::str(t.layout()) + ")");
    }
    format::DtypeToName(t.scalar_type(), "tensor '" + f.name + "'");
    if (!t.device().is_cpu()) *any_cuda = true;
    StagedTensor s;
    s.name = f.name;
    s.dtype = t.scalar_type();
    s.shape = t.sizes().vec();
    s.nbytes = static_cast<uint64_t>(t.numel()) * t.element_size();
    s.offset = offset;
    offset = (offset + s.nbytes + kAlign - 1) / kAlign * kAlign;
    staged->push_back(std::move(s));
  }
  return offset;
}

void CopySnapshot(const std::vector<format::FlatTensor>& flat,
                  const std::vector<StagedTensor>& staged, uint8_t* base, TaskPool* pool) {
  struct Piece {
    const uint8_t* src;
    uint8_t* dst;
    uint64_t n;
    size_t tensor;  // for strided copies (src == nullptr)
  };
  std::vector<Piece> pieces;
  std::vector<std::pair<c10::Device, std::vector<size_t>>> device_tensors;
  for (size_t i = 0; i < flat.size(); ++i) {
    const at::Tensor& t = flat[i].tensor;
    const StagedTensor& s = staged[i];
    if (s.nbytes == 0) continue;
    if (!t.device().is_cpu()) {
      auto it = std::find_if(device_tensors.begin(), device_tensors.end(),
                             [&](const auto& d) { return d.first == t.device(); });
      if (it == device_tensors.end())
        it = device_tensors.insert(device_tensors.end(), {t.device(), {}});
      it->second.push_back(i);
    } else if (t.is_contiguous() && !t.is_neg() && !t.is_conj()) {
      const auto* src = static_cast<const uint8_t*>(t.data_ptr());
      for (uint64_t off = 0; off < s.nbytes; off += kCopyPiece) {
        pieces.push_back(
            {src + off, base + s.offset + off, std::min(kCopyPiece, s.nbytes - off), i});
      }
    } else {
      pieces.push_back({nullptr, base + s.offset, s.nbytes, i});
    }
  }

  // Device tensors: enqueue every copy on a side stream that first waits for
  // the work already queued on the current stream, then synchronize once.
  for (const auto& dev : device_tensors) {
    c10::impl::VirtualGuardImpl impl(dev.first.type());
    c10::Stream current = impl.getStream(dev.first);
    c10::Stream side = impl.getStreamFromGlobalPool(dev.first, /*isHighPriority=*/false);
    c10::Event ready(dev.first.type());
    ready.record(current);
    ready.block(side);
    {
      c10::StreamGuard guard(side);
      for (size_t i : dev.second)
        StagingView(base, staged[i]).copy_(flat[i].tensor, /*non_blocking=*/true);
    }
    side.synchronize();
  }

  auto run = [&](size_t k) {
    const Piece& p = pieces[k];
    if (p.src != nullptr) {
      std::memcpy(p.dst, p.src, p.n);
    } else {
      StagingView(base, staged[p.tensor]).copy_(flat[p.tensor].tensor);
    }
  };
  if (pool == nullptr || pieces.size() < 2) {
    for (size_t k = 0; k < pieces.size(); ++k) run(k);
  } else {
    pool->ParallelFor(pieces.size(), run);
  }
}

}  // namespace engine
}  // namespace ackpt
