// Python binding of CpuAttention (halo._core.CpuAttention): takes raw tensor addresses and
// releases the GIL around the native decode. Shapes and dtypes are checked by the Python wrapper.
#include <pybind11/pybind11.h>

#include <cstdint>
#include <memory>
#include <string>

#include "cpu_attention.h"

namespace py = pybind11;

namespace halo {

void bind_cpu_attention(py::module_& m) {
  py::class_<CpuAttention>(m, "CpuAttention",
                           "Decode attention read straight from the paged KV pool, on a persistent pool "
                           "of CPU threads. Takes raw tensor addresses (tensor.data_ptr()); the Python "
                           "wrapper halo.engine.cpu_attention checks shapes, dtypes and contiguity.")
      .def(py::init([](int num_threads, const std::string& isa, const std::string& threads) {
             return std::make_unique<CpuAttention>(num_threads, parse_isa(isa), parse_threads(threads));
           }),
           py::arg("num_threads"), py::arg("isa") = "auto", py::arg("threads") = "auto",
           "Run each call on num_threads threads, the caller included. isa: 'auto' (the widest "
           "this CPU runs), 'avx512', 'avx2' or 'generic' (to test or time the code other machines "
           "run). threads: 'auto' (OpenMP where the build has it), 'openmp' (the process's OpenMP "
           "team, which is torch's) or 'own' (num_threads - 1 parked threads of its own, what a build "
           "without OpenMP runs). ValueError if num_threads < 1, or the CPU lacks isa, or the build "
           "lacks OpenMP for threads='openmp'.")
      .def_property_readonly("num_threads", &CpuAttention::num_threads)
      .def_property_readonly("threads", [](const CpuAttention& self) { return threads_name(self.threads()); },
                             "Where the threads come from: 'openmp' or 'own'.")
      .def_property_readonly("isa", [](const CpuAttention& self) { return isa_name(self.isa()); },
                             "The instruction set the kernel runs with.")
      .def(
          "decode",
          [](CpuAttention& self, uintptr_t q, uintptr_t k_pool, uintptr_t v_pool, uintptr_t tables,
             uintptr_t lens, uintptr_t out, int64_t batch, int64_t num_heads, int64_t num_kv_heads,
             int64_t head_dim, int64_t num_blocks, int64_t block_size, int64_t max_blocks, double scale,
             bool is_bf16) {
            DecodeArgs a{reinterpret_cast<const void*>(q),
                         reinterpret_cast<const void*>(k_pool),
                         reinterpret_cast<const void*>(v_pool),
                         reinterpret_cast<const int64_t*>(tables),
                         reinterpret_cast<const int64_t*>(lens),
                         reinterpret_cast<void*>(out),
                         DecodeShape{batch, num_heads, num_kv_heads, head_dim, num_blocks, block_size, max_blocks},
                         static_cast<float>(scale),
                         is_bf16};
            py::gil_scoped_release release;
            self.decode(a);
          },
          py::arg("q"), py::arg("k_pool"), py::arg("v_pool"), py::arg("tables"), py::arg("lens"), py::arg("out"),
          py::arg("batch"), py::arg("num_heads"), py::arg("num_kv_heads"), py::arg("head_dim"),
          py::arg("num_blocks"), py::arg("block_size"), py::arg("max_blocks"), py::arg("scale"),
          py::arg("is_bf16"),
          "Decode attention for batch sequences, one query token each. q [batch, num_heads, head_dim], "
          "k_pool/v_pool [num_kv_heads, num_blocks, block_size, head_dim], tables int64 [batch, "
          "max_blocks], lens int64 [batch] (tokens including the current one), out [batch, num_heads * "
          "head_dim]; all contiguous, q/pools/out fp32 or (is_bf16) bf16. Query head h reads KV head "
          "h // (num_heads // num_kv_heads). Accumulates in fp32 with a streaming softmax; a length "
          "of 0 gives zeros. ValueError, writing nothing, for bad sizes, a length outside [0, "
          "max_blocks * block_size] or a block id in use outside [0, num_blocks). Releases the GIL.");
}

}  // namespace halo
