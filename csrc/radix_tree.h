// RadixTree: the prefix cache over KV blocks. A trie whose edges are block_size-token chunks, one
// node per cached block; the tree holds one allocator reference on each block it caches, so a
// block is evictable exactly when that reference is the only one left.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

#include "block_allocator.h"

namespace halo {

class RadixTree {
 public:
  RadixTree(std::shared_ptr<BlockAllocator> allocator, int64_t block_size);
  ~RadixTree();  // releases the tree's references, so dropping a cache never leaks blocks
  RadixTree(const RadixTree&) = delete;
  RadixTree& operator=(const RadixTree&) = delete;

  int64_t block_size() const { return block_size_; }
  int64_t num_cached_blocks() const { return num_nodes_; }

  // Blocks of the longest cached prefix of whole chunks; refreshes their LRU time, takes no
  // references (the caller increfs what it keeps).
  std::vector<BlockId> match(const int32_t* tokens, size_t n);
  std::vector<BlockId> match(const int64_t* tokens, size_t n);

  // Caches the n / block_size whole chunks, chunk i backed by blocks[i]; chunks already cached keep
  // their block. Returns how many blocks were newly adopted (each incref'd once).
  int64_t insert(const int32_t* tokens, size_t n, const std::vector<BlockId>& blocks);
  int64_t insert(const int64_t* tokens, size_t n, const std::vector<BlockId>& blocks);

  // Frees up to num_blocks blocks, least recently used unpinned leaves first.
  int64_t evict(int64_t num_blocks);
  // What repeated evict() would free now: nodes whose whole subtree only the tree holds.
  int64_t num_evictable() const;
  void clear();  // releases blocks in ascending id order, so later allocations are reproducible

 private:
  struct Node;

  template <typename T>
  std::vector<BlockId> match_chunks(const T* tokens, size_t n);
  template <typename T>
  int64_t insert_chunks(const T* tokens, size_t n, const std::vector<BlockId>& blocks);
  template <typename T>
  Node* find_child(const Node& parent, const T* chunk, uint64_t hash) const;

  std::vector<Node*> nodes_preorder() const;  // every node but the root, parents first
  void remove_leaf(Node* leaf);
  void destroy_nodes();  // iterative, so a deep chain cannot overflow the stack

  std::shared_ptr<BlockAllocator> allocator_;
  int64_t block_size_;
  std::unique_ptr<Node> root_;
  std::vector<uint8_t> cached_;  // cached_[b]: b backs a node; adopting it twice is a caller bug
  int64_t num_nodes_ = 0;
  uint64_t clock_ = 0;  // bumped per match/insert; a node's last_access is the clock when touched
};

}  // namespace halo
