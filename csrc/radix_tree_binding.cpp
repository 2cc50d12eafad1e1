// Python binding of RadixTree (halo._core.RadixTree), including the zero-copy reading of token
// ids from C-contiguous int32/int64 numpy arrays.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "radix_tree.h"

namespace py = pybind11;

namespace halo {

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
