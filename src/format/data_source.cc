// MemorySource (format/data_source.h).
#include "format/data_source.h"

#include <algorithm>

namespace ackpt {
namespace format {

MemorySource::MemorySource(std::vector<FlatTensor>* tensors)
    : DataSource([&] {
        uint64_t n = 0;
        for (const auto& t : *tensors) n += t.nbytes;
        return n;
      }()) {
  uint64_t offset = 0;
  for (auto& t : *tensors) {
    t.staging_offset = offset;
    if (t.nbytes > 0) {
      pieces_.emplace_back(static_cast<const uint8_t*>(t.data), offset);
      ends_.push_back(offset + t.nbytes);
    }
    offset += t.nbytes;
  }
}

uint64_t MemorySource::WaitFor(uint64_t) { return size(); }

void MemorySource::Visit(uint64_t offset, uint64_t n,
                         const std::function<void(const void*, size_t)>& fn) const {
  // The first piece ending after `offset`.
  size_t i =
      static_cast<size_t>(std::upper_bound(ends_.begin(), ends_.end(), offset) - ends_.begin());
  const uint64_t end = offset + n;
  for (; i < pieces_.size() && pieces_[i].second < end; ++i) {
    const uint64_t b = std::max(offset, pieces_[i].second);
    const uint64_t e = std::min(end, ends_[i]);
    if (b < e) fn(pieces_[i].first + (b - pieces_[i].second), static_cast<size_t>(e - b));
  }
}

}  // namespace format
}  // namespace ackpt
