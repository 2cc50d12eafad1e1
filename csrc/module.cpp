// halo._core: the native half of Halo. Each component binds itself from its own file.
#include <pybind11/pybind11.h>

namespace py = pybind11;

namespace halo {
void bind_block_allocator(py::module_& m);
void bind_radix_tree(py::module_& m);
void bind_cpu_attention(py::module_& m);
void bind_cpu_norm(py::module_& m);
void bind_cpu_rope(py::module_& m);
void bind_plan(py::module_& m);  // plan cost evaluator and epoch DP
void bind_ring_buffer(py::module_& m);  // also cuda_enabled(): the ring buffer's pinning depends on it
void bind_scheduler_core(py::module_& m);
}  // namespace halo

PYBIND11_MODULE(_core, m) {
  m.doc() = "Halo native core: block allocator, radix prefix cache, scheduler and cost evaluator";
  halo::bind_block_allocator(m);
  halo::bind_radix_tree(m);
  halo::bind_cpu_attention(m);
  halo::bind_cpu_norm(m);
  halo::bind_cpu_rope(m);
  halo::bind_ring_buffer(m);
  halo::bind_scheduler_core(m);
  halo::bind_plan(m);
}
