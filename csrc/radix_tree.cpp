// RadixTree implementation: the chunk trie, matching, insertion and LRU eviction of leaves. The
// Python binding is in radix_tree_binding.cpp.
#include "radix_tree.h"

#include <algorithm>
#include <functional>
#include <limits>
#include <queue>
#include <string>
#include <unordered_map>
#include <utility>

namespace halo {

struct RadixTree::Node {
  std::vector<int32_t> chunk;  // the block_size tokens on the edge into this node
  uint64_t hash = 0;           // hash_chunk(chunk): this node's key in parent->children
  BlockId block = -1;
  uint64_t last_access = 0;
  Node* parent = nullptr;  // non-owning: the parent owns this node through children
  std::unordered_multimap<uint64_t, std::unique_ptr<Node>> children;  // multi: hashes may collide
  mutable bool pinned_below = false;  // scratch for num_evictable()
};

namespace {

// Hashes token values widened to 64 bits, so an int32 and an int64 view of a chunk agree.
template <typename T>
uint64_t hash_chunk(const T* chunk, size_t n) {
  uint64_t h = 0x9E3779B97F4A7C15ull;
  for (size_t i = 0; i < n; ++i) {
    h ^= static_cast<uint64_t>(static_cast<int64_t>(chunk[i]));
    h *= 0xFF51AFD7ED558CCDull;
    h ^= h >> 32;
  }
  h ^= h >> 29;
  h *= 0xC4CEB9FE1A85EC53ull;
  return h ^ (h >> 32);
}

template <typename T>
void check_token_range(const T* tokens, size_t n) {
  if constexpr (sizeof(T) > sizeof(int32_t)) {
    for (size_t i = 0; i < n; ++i) {
      if (tokens[i] < std::numeric_limits<int32_t>::min() || tokens[i] > std::numeric_limits<int32_t>::max()) {
        throw std::invalid_argument("token id " + std::to_string(tokens[i]) + " does not fit in int32");
      }
    }
  }
}

}  // namespace

RadixTree::RadixTree(std::shared_ptr<BlockAllocator> allocator, int64_t block_size)
    : allocator_(std::move(allocator)), block_size_(block_size), root_(std::make_unique<Node>()) {
  if (!allocator_) throw std::invalid_argument("allocator must not be None");
  if (block_size < 1) throw std::invalid_argument("block_size must be >= 1, got " + std::to_string(block_size));
  cached_.assign(static_cast<size_t>(allocator_->num_blocks()), 0);
}

RadixTree::~RadixTree() {
  try {
    clear();
  } catch (...) {  // a caller over-freed a cached block; still tear down without recursion
    destroy_nodes();
  }
}

template <typename T>
RadixTree::Node* RadixTree::find_child(const Node& parent, const T* chunk, uint64_t hash) const {
  auto [it, end] = parent.children.equal_range(hash);
  for (; it != end; ++it) {
    const std::vector<int32_t>& edge = it->second->chunk;
    if (std::equal(edge.begin(), edge.end(), chunk,
                   [](int32_t a, T b) { return static_cast<int64_t>(a) == static_cast<int64_t>(b); })) {
      return it->second.get();
    }
  }
  return nullptr;
}

template <typename T>
std::vector<BlockId> RadixTree::match_chunks(const T* tokens, size_t n) {
  const size_t bs = static_cast<size_t>(block_size_);
  std::vector<BlockId> blocks;
  blocks.reserve(n / bs);
  ++clock_;
  const Node* node = root_.get();
  for (size_t start = 0; start + bs <= n; start += bs) {
    Node* child = find_child(*node, tokens + start, hash_chunk(tokens + start, bs));
    if (child == nullptr) break;
    child->last_access = clock_;
    blocks.push_back(child->block);
    node = child;
  }
  return blocks;
}

template <typename T>
int64_t RadixTree::insert_chunks(const T* tokens, size_t n, const std::vector<BlockId>& blocks) {
  const size_t bs = static_cast<size_t>(block_size_);
  const size_t num_chunks = n / bs;
  if (blocks.size() < num_chunks) {
    throw std::invalid_argument("insert of " + std::to_string(num_chunks) + " full chunks needs as many blocks, got " +
                                std::to_string(blocks.size()));
  }
  Node* node = root_.get();
  size_t first_new = 0;
  for (; first_new < num_chunks; ++first_new) {
    const T* chunk = tokens + first_new * bs;
    Node* child = find_child(*node, chunk, hash_chunk(chunk, bs));
    if (child == nullptr) break;
    node = child;
  }

  // Validate all that the new nodes need before changing anything, so a bad call leaves no trace.
  check_token_range(tokens + first_new * bs, (num_chunks - first_new) * bs);
  const std::vector<BlockId> adopted(blocks.begin() + first_new, blocks.begin() + num_chunks);
  for (size_t i = 0; i < adopted.size(); ++i) {
    const BlockId b = adopted[i];
    std::string problem;
    if (b < 0 || b >= allocator_->num_blocks()) {
      problem = "is out of range";
    } else if (allocator_->refcount(b) == 0) {
      problem = "is free";
    } else if (cached_[b]) {
      problem = "already backs a cached chunk";
    }
    if (!problem.empty()) {
      for (size_t j = 0; j < i; ++j) cached_[adopted[j]] = 0;
      throw std::invalid_argument("cannot cache block " + std::to_string(b) + ": it " + problem);
    }
    cached_[b] = 1;  // set now so a block repeated within this call is caught too
  }
  allocator_->incref(adopted);

  ++clock_;
  for (Node* p = node; p != root_.get(); p = p->parent) p->last_access = clock_;
  for (size_t i = first_new; i < num_chunks; ++i) {
    const T* chunk = tokens + i * bs;
    auto child = std::make_unique<Node>();
    child->chunk.assign(chunk, chunk + bs);
    child->hash = hash_chunk(chunk, bs);
    child->block = blocks[i];
    child->last_access = clock_;
    child->parent = node;
    Node* next = child.get();
    node->children.emplace(next->hash, std::move(child));
    node = next;
  }
  num_nodes_ += static_cast<int64_t>(adopted.size());
  return static_cast<int64_t>(adopted.size());
}

std::vector<BlockId> RadixTree::match(const int32_t* tokens, size_t n) { return match_chunks(tokens, n); }
std::vector<BlockId> RadixTree::match(const int64_t* tokens, size_t n) { return match_chunks(tokens, n); }
int64_t RadixTree::insert(const int32_t* tokens, size_t n, const std::vector<BlockId>& blocks) {
  return insert_chunks(tokens, n, blocks);
}
int64_t RadixTree::insert(const int64_t* tokens, size_t n, const std::vector<BlockId>& blocks) {
  return insert_chunks(tokens, n, blocks);
}

int64_t RadixTree::evict(int64_t num_blocks) {
  if (num_blocks < 0) throw std::invalid_argument("cannot evict a negative number of blocks");
  if (num_blocks == 0) return 0;
  // Invariant: candidates are leaves only the tree holds, popped oldest first. Every touch
  // refreshes the whole root path, so a parent joining when its last child goes is never older
  // than what was already popped: the order is true LRU over what is evictable.
  auto evictable_leaf = [this](const Node* n) {
    return n->children.empty() && allocator_->refcount(n->block) == 1;
  };
  using Candidate = std::pair<uint64_t, Node*>;
  std::priority_queue<Candidate, std::vector<Candidate>, std::greater<Candidate>> candidates;
  for (Node* n : nodes_preorder()) {
    if (evictable_leaf(n)) candidates.emplace(n->last_access, n);
  }
  std::vector<BlockId> freed;
  while (static_cast<int64_t>(freed.size()) < num_blocks && !candidates.empty()) {
    Node* leaf = candidates.top().second;
    candidates.pop();
    Node* parent = leaf->parent;
    freed.push_back(leaf->block);
    remove_leaf(leaf);
    if (parent != root_.get() && evictable_leaf(parent)) candidates.emplace(parent->last_access, parent);
  }
  allocator_->free(freed);
  return static_cast<int64_t>(freed.size());
}

int64_t RadixTree::num_evictable() const {
  // Reverse preorder visits every child before its parent, so pinned_below is final when read.
  const std::vector<Node*> nodes = nodes_preorder();
  for (const Node* n : nodes) n->pinned_below = false;
  int64_t count = 0;
  for (auto it = nodes.rbegin(); it != nodes.rend(); ++it) {
    const Node* n = *it;
    if (n->pinned_below || allocator_->refcount(n->block) != 1) {
      n->parent->pinned_below = true;
    } else {
      ++count;
    }
  }
  return count;
}

void RadixTree::clear() {
  std::vector<BlockId> blocks;
  blocks.reserve(static_cast<size_t>(num_nodes_));
  for (const Node* n : nodes_preorder()) blocks.push_back(n->block);
  // Sorted so the allocator's free list, and so later block ids, do not depend on hash order.
  std::sort(blocks.begin(), blocks.end());
  allocator_->free(blocks);  // all-or-nothing: if a count was corrupted, the tree stays intact
  destroy_nodes();
}

std::vector<RadixTree::Node*> RadixTree::nodes_preorder() const {
  std::vector<Node*> order;
  order.reserve(static_cast<size_t>(num_nodes_));
  std::vector<Node*> stack;
  for (auto& [hash, child] : root_->children) stack.push_back(child.get());
  while (!stack.empty()) {
    Node* n = stack.back();
    stack.pop_back();
    order.push_back(n);
    for (auto& [hash, child] : n->children) stack.push_back(child.get());
  }
  return order;
}

void RadixTree::remove_leaf(Node* leaf) {
  cached_[leaf->block] = 0;
  --num_nodes_;
  Node* parent = leaf->parent;
  auto [it, end] = parent->children.equal_range(leaf->hash);
  for (; it != end; ++it) {
    if (it->second.get() == leaf) {
      parent->children.erase(it);
      return;
    }
  }
}

void RadixTree::destroy_nodes() {
  // Clearing children deepest first means each node dies with no children of its own.
  const std::vector<Node*> nodes = nodes_preorder();
  for (auto it = nodes.rbegin(); it != nodes.rend(); ++it) (*it)->children.clear();
  root_->children.clear();
  std::fill(cached_.begin(), cached_.end(), 0);
  num_nodes_ = 0;
}

}  // namespace halo
