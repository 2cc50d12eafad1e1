// BlockAllocator implementation and its Python binding (halo._core.BlockAllocator,
// halo._core.OutOfBlocksError).
#include "block_allocator.h"

#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <memory>
#include <string>

namespace py = pybind11;

namespace halo {

BlockAllocator::BlockAllocator(int64_t num_blocks) {
  if (num_blocks < 1) {
    throw std::invalid_argument("num_blocks must be >= 1, got " + std::to_string(num_blocks));
  }
  refcounts_.assign(static_cast<size_t>(num_blocks), 0);
  free_.reserve(static_cast<size_t>(num_blocks));
  for (BlockId b = num_blocks - 1; b >= 0; --b) free_.push_back(b);
}

bool BlockAllocator::can_allocate(int64_t n) const {
  if (n < 0) throw std::invalid_argument("cannot allocate a negative number of blocks");
  return n <= num_free();
}

std::vector<BlockId> BlockAllocator::allocate(int64_t n) {
  if (!can_allocate(n)) {
    throw OutOfBlocks("asked for " + std::to_string(n) + " blocks, only " +
                      std::to_string(num_free()) + " of " + std::to_string(num_blocks()) + " free");
  }
  std::vector<BlockId> blocks(static_cast<size_t>(n));
  for (BlockId& b : blocks) {
    b = free_.back();
    free_.pop_back();
    refcounts_[b] = 1;
  }
  return blocks;
}

void BlockAllocator::check_in_range(BlockId block) const {
  if (!in_range(block)) {
    throw std::invalid_argument("block id " + std::to_string(block) + " out of range [0, " +
                                std::to_string(num_blocks()) + ")");
  }
}

void BlockAllocator::incref(const std::vector<BlockId>& blocks) {
  for (BlockId b : blocks) {
    check_in_range(b);
    if (refcounts_[b] == 0) throw std::invalid_argument("incref of free block " + std::to_string(b));
  }
  for (BlockId b : blocks) ++refcounts_[b];
}

void BlockAllocator::free(const std::vector<BlockId>& blocks) {
  // Decrement in place and undo on the first bad id: an id may repeat, so it is only valid while
  // the block still holds a reference for each repetition, which a read-only pre-check can't see.
  const size_t free_before = free_.size();
  for (size_t i = 0; i < blocks.size(); ++i) {
    const BlockId b = blocks[i];
    if (!in_range(b) || refcounts_[b] == 0) {
      for (size_t j = 0; j < i; ++j) ++refcounts_[blocks[j]];
      free_.resize(free_before);
      check_in_range(b);
      throw std::invalid_argument("free of block " + std::to_string(b) +
                                  " with no reference left (free, or repeated more than it is held)");
    }
    if (--refcounts_[b] == 0) free_.push_back(b);
  }
}

int64_t BlockAllocator::refcount(BlockId block) const {
  check_in_range(block);
  return refcounts_[block];
}

void bind_block_allocator(py::module_& m) {
  auto& out_of_blocks = py::register_exception<OutOfBlocks>(m, "OutOfBlocksError", PyExc_RuntimeError);
  out_of_blocks.attr("__doc__") =
      "Raised by BlockAllocator.allocate when fewer blocks are free than asked for; nothing was "
      "allocated. Evict cached blocks or preempt a sequence and retry.";

  // Held by shared_ptr so a RadixTree can share ownership and outlive the Python name.
  py::class_<BlockAllocator, std::shared_ptr<BlockAllocator>>(
      m, "BlockAllocator",
      "Reference-counted pool of KV-cache block ids shared by sequences and the prefix cache.")
      .def(py::init<int64_t>(), py::arg("num_blocks"),
           "Create a pool of num_blocks blocks (ids 0..num_blocks-1), all free. ValueError if "
           "num_blocks < 1.")
      .def_property_readonly("num_blocks", &BlockAllocator::num_blocks, "Total number of blocks.")
      .def_property_readonly("num_free", &BlockAllocator::num_free,
                             "Number of blocks nobody holds a reference to.")
      .def("can_allocate", &BlockAllocator::can_allocate, py::arg("n"),
           "True if allocate(n) would succeed. ValueError if n < 0.")
      .def("allocate", &BlockAllocator::allocate, py::arg("n"),
           "Return n fresh block ids, each with refcount 1. Raises OutOfBlocksError, allocating "
           "nothing, when fewer than n are free. A fresh allocator hands out ids lowest first; "
           "freed blocks are reused most-recently-freed first.")
      .def("incref", &BlockAllocator::incref, py::arg("blocks"),
           "Add one reference to each block (an id may repeat). ValueError, changing nothing, if "
           "any id is out of range or free.")
      .def("free", &BlockAllocator::free, py::arg("blocks"),
           "Drop one reference from each block (an id may repeat); a block whose count reaches 0 "
           "returns to the free list. ValueError, changing nothing, if any id is out of range or "
           "would be freed more times than it is referenced.")
      .def("refcount", &BlockAllocator::refcount, py::arg("block"),
           "Number of references to block (0 if free). ValueError if out of range.")
      .def("__repr__", [](const BlockAllocator& a) {
        return "BlockAllocator(num_blocks=" + std::to_string(a.num_blocks()) +
               ", num_free=" + std::to_string(a.num_free()) + ")";
      });
}

}  // namespace halo
