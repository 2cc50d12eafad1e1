// halo._core: the native half of Halo. Each component binds itself from its own file.
#include <pybind11/pybind11.h>

namespace py = pybind11;

namespace halo {
void bind_block_allocator(py::module_& m);
void bind_radix_tree(py::module_& m);
}  // namespace halo

PYBIND11_MODULE(_core, m) {
  m.doc() = "Halo native core: block allocator, radix prefix cache, scheduler and cost evaluator";
  halo::bind_block_allocator(m);
  halo::bind_radix_tree(m);
}
