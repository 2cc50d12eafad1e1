// Python binding of CpuRope (halo._core.CpuRope): raw tensor addresses, the GIL released around the
// native call. Shapes, dtypes and layouts are checked by the Python wrapper (halo.engine.rope).
#include <pybind11/pybind11.h>

#include <cstdint>
#include <memory>
#include <string>

#include "cpu_rope.h"

namespace py = pybind11;

namespace halo {

void bind_cpu_rope(py::module_& m) {
  py::class_<CpuRope>(m, "CpuRope",
                      "RoPE of q and k from the fused QKV projection, k and v stored into the paged pool, "
                      "in one native call. Takes raw tensor addresses; the Python wrapper "
                      "halo.engine.rope checks shapes, dtypes and contiguity.")
      .def(py::init([](int num_threads, const std::string& isa, const std::string& threads) {
             return std::make_unique<CpuRope>(num_threads, parse_isa(isa), parse_threads(threads));
           }),
           py::arg("num_threads"), py::arg("isa") = "auto", py::arg("threads") = "auto",
           "isa and threads as for CpuAttention.")
      .def_property_readonly("num_threads", &CpuRope::num_threads)
      .def_property_readonly("isa", [](const CpuRope& self) { return isa_name(self.isa()); })
      .def(
          "rotate_and_store",
          [](CpuRope& self, uintptr_t qkv, uintptr_t cos, uintptr_t sin, uintptr_t positions, uintptr_t slots,
             uintptr_t q_out, uintptr_t k_out, uintptr_t k_pool, uintptr_t v_pool, int64_t tokens, int64_t heads,
             int64_t kv_heads, int64_t head_dim, int64_t table_len, int64_t pool_slots, bool is_bf16) {
            RopeArgs a{reinterpret_cast<const void*>(qkv),
                       reinterpret_cast<const void*>(cos),
                       reinterpret_cast<const void*>(sin),
                       reinterpret_cast<const int64_t*>(positions),
                       reinterpret_cast<const int64_t*>(slots),
                       reinterpret_cast<void*>(q_out),
                       reinterpret_cast<void*>(k_out),
                       reinterpret_cast<void*>(k_pool),
                       reinterpret_cast<void*>(v_pool),
                       tokens,
                       heads,
                       kv_heads,
                       head_dim,
                       table_len,
                       pool_slots,
                       is_bf16};
            py::gil_scoped_release release;
            self.rotate_and_store(a);
          },
          py::arg("qkv"), py::arg("cos"), py::arg("sin"), py::arg("positions"), py::arg("slots"), py::arg("q_out"),
          py::arg("k_out"), py::arg("k_pool"), py::arg("v_pool"), py::arg("tokens"), py::arg("heads"),
          py::arg("kv_heads"), py::arg("head_dim"), py::arg("table_len"), py::arg("pool_slots"), py::arg("is_bf16"),
          "qkv [tokens, (heads + 2 kv_heads) head_dim]; cos/sin [table_len, head_dim]; positions, slots int64 "
          "[tokens]; q_out [tokens, heads, head_dim]; k_out [tokens, kv_heads, head_dim] or 0; k_pool/v_pool "
          "[kv_heads, pool_slots, head_dim]; all contiguous, one dtype (fp32 or is_bf16 bf16). q_out = "
          "rope(q); the pools' slots = rope(k), v; k_out = rope(k). ValueError, writing nothing, for bad "
          "sizes, a position outside the table or a slot outside the pool. Releases the GIL.");
}

}  // namespace halo
