// RadixTree implementation and its Python binding (halo._core.RadixTree), including the zero-copy
// reading of token ids from numpy arrays.
#include "radix_tree.h"

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <functional>
#include <limits>
#include <queue>
#include <string>
#include <unordered_map>
#include <utility>

namespace py = pybind11;

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

namespace {

// Calls fn(pointer, length) on the token ids. C-contiguous int32/int64 numpy arrays are read in
// place; lists, tuples and other integer arrays are converted once.
template <typename Fn>
auto with_tokens(const py::object& tokens, Fn&& fn) {
  const bool is_list = PyList_Check(tokens.ptr()) || PyTuple_Check(tokens.ptr());
  if (!is_list && py::isinstance<py::array>(tokens)) {
    const auto array = py::reinterpret_borrow<py::array>(tokens);
    if (array.ndim() != 1) {
      throw py::value_error("tokens must be a 1-D array, got " + std::to_string(array.ndim()) + "-D");
    }
    const char kind = array.dtype().kind();
    if (kind != 'i' && kind != 'u') throw py::type_error("tokens array must have an integer dtype");
    constexpr int flags = py::array::c_style | py::array::forcecast;
    if (kind == 'i' && array.itemsize() == 4) {
      const auto view = py::array_t<int32_t, flags>::ensure(array);
      if (!view) throw py::error_already_set();
      return fn(view.data(), static_cast<size_t>(view.size()));
    }
    const auto view = py::array_t<int64_t, flags>::ensure(array);
    if (!view) throw py::error_already_set();
    return fn(view.data(), static_cast<size_t>(view.size()));
  }
  py::detail::make_caster<std::vector<int64_t>> caster;
  if (!caster.load(tokens, true)) {
    throw py::type_error("tokens must be a list of ints or a 1-D int32/int64 numpy array");
  }
  const auto& ids = py::detail::cast_op<const std::vector<int64_t>&>(caster);
  return fn(ids.data(), ids.size());
}

}  // namespace

void bind_radix_tree(py::module_& m) {
  py::class_<RadixTree>(m, "RadixTree",
                        "Prefix cache over KV blocks: a trie of block_size-token chunks, one node per "
                        "cached block, holding one allocator reference on each.")
      .def(py::init<std::shared_ptr<BlockAllocator>, int64_t>(), py::arg("allocator"), py::arg("block_size"),
           "Create an empty cache over allocator's blocks (the tree shares ownership of the allocator, so it "
           "stays alive). ValueError if block_size < 1. Dropping the tree releases its references.")
      .def_property_readonly("block_size", &RadixTree::block_size, "Tokens per block (per trie edge).")
      .def(
          "match",
          [](RadixTree& tree, const py::object& tokens) {
            return with_tokens(tokens, [&](const auto* ids, size_t n) { return tree.match(ids, n); });
          },
          py::arg("tokens"),
          "Block ids covering the longest cached prefix of tokens made of whole blocks (chunk i is "
          "tokens[i*block_size:(i+1)*block_size]). tokens: list of ints or 1-D integer numpy array. "
          "Refreshes the LRU time of the matched nodes; takes no references (incref what you keep).")
      .def(
          "insert",
          [](RadixTree& tree, const py::object& tokens, const std::vector<BlockId>& blocks) {
            return with_tokens(tokens, [&](const auto* ids, size_t n) { return tree.insert(ids, n, blocks); });
          },
          py::arg("tokens"), py::arg("blocks"),
          "Cache the len(tokens)//block_size whole chunks of tokens, chunk i backed by blocks[i]. Chunks "
          "already cached keep their block (the caller's duplicate is untouched); each newly adopted "
          "block is incref'd once. Returns the number adopted. ValueError, changing nothing, if blocks "
          "is too short or a block to adopt is free, out of range or already cached.")
      .def("evict", &RadixTree::evict, py::arg("num_blocks"),
           "Free up to num_blocks blocks by removing least-recently-used leaves that only the tree "
           "holds (refcount 1); a parent becomes a candidate when its last child goes. Returns how "
           "many were freed.")
      .def_property_readonly("num_cached_blocks", &RadixTree::num_cached_blocks,
                             "Number of nodes (blocks) the tree holds.")
      .def_property_readonly("num_evictable", &RadixTree::num_evictable,
                             "Blocks evict() could free right now: nodes whose whole subtree only the "
                             "tree holds. Walks the tree (O(nodes)).")
      .def("clear", &RadixTree::clear, "Drop every node, releasing the tree's reference on its block.")
      .def("__repr__", [](const RadixTree& t) {
        return "RadixTree(block_size=" + std::to_string(t.block_size()) +
               ", num_cached_blocks=" + std::to_string(t.num_cached_blocks()) + ")";
      });
}

}  // namespace halo
