// BlockAllocator: the reference-counted pool of KV-cache block ids. Running sequences and the
// radix prefix cache share blocks by each holding references; a block is free when nobody does.
// Plain C++ (no pybind11) so other native components can use it directly.
#pragma once

#include <cstdint>
#include <stdexcept>
#include <vector>

namespace halo {

using BlockId = int64_t;

// Raised when fewer blocks are free than asked for. Distinct from a caller bug (invalid_argument)
// because the caller's remedy differs: evict cached blocks or preempt a sequence, then retry.
class OutOfBlocks : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

class BlockAllocator {
 public:
  explicit BlockAllocator(int64_t num_blocks);

  int64_t num_blocks() const { return static_cast<int64_t>(refcounts_.size()); }
  int64_t num_free() const { return static_cast<int64_t>(free_.size()); }

  bool can_allocate(int64_t n) const;
  // n fresh blocks with one reference each, or OutOfBlocks and no change. A fresh allocator hands
  // out ids lowest first; freed blocks are reused most-recently-freed first.
  std::vector<BlockId> allocate(int64_t n);
  // Both are all-or-nothing: every id is checked before any count changes.
  void incref(const std::vector<BlockId>& blocks);
  void free(const std::vector<BlockId>& blocks);

  int64_t refcount(BlockId block) const;  // 0 for a free block

 private:
  bool in_range(BlockId block) const { return block >= 0 && block < num_blocks(); }
  void check_in_range(BlockId block) const;

  std::vector<int32_t> refcounts_;
  std::vector<BlockId> free_;  // a stack: back() is the next block handed out
};

}  // namespace halo
