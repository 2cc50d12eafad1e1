// Python binding of CpuNorm (halo._core.CpuNorm): raw tensor addresses, the GIL released around the
// native call. Shapes, dtypes and layouts are checked by the Python wrapper (halo.engine.cpu_norm).
#include <pybind11/pybind11.h>

#include <cstdint>
#include <memory>
#include <string>

#include "cpu_norm.h"

namespace py = pybind11;

namespace halo {

void bind_cpu_norm(py::module_& m) {
  py::class_<CpuNorm>(m, "CpuNorm",
                      "RMSNorm of a matrix's rows in one native call (fp32 statistics), on num_threads "
                      "threads. Takes raw tensor addresses (tensor.data_ptr()); the Python wrapper "
                      "halo.engine.cpu_norm checks shapes, dtypes and contiguity.")
      .def(py::init([](int num_threads, const std::string& isa, const std::string& threads) {
             return std::make_unique<CpuNorm>(num_threads, parse_isa(isa), parse_threads(threads));
           }),
           py::arg("num_threads"), py::arg("isa") = "auto", py::arg("threads") = "auto",
           "isa and threads as for CpuAttention. ValueError if num_threads < 1, or the CPU lacks isa, "
           "or the build lacks OpenMP for threads='openmp'.")
      .def_property_readonly("num_threads", &CpuNorm::num_threads)
      .def_property_readonly("isa", [](const CpuNorm& self) { return isa_name(self.isa()); })
      .def(
          "rms_norm",
          [](CpuNorm& self, uintptr_t x, uintptr_t weight, uintptr_t out, int64_t rows, int64_t dim, double eps,
             bool is_bf16, bool scale_after_rounding) {
            NormArgs a{reinterpret_cast<const void*>(x),
                       reinterpret_cast<const void*>(weight),
                       reinterpret_cast<void*>(out),
                       rows,
                       dim,
                       static_cast<float>(eps),
                       is_bf16,
                       scale_after_rounding};
            py::gil_scoped_release release;
            self.rms_norm(a);
          },
          py::arg("x"), py::arg("weight"), py::arg("out"), py::arg("rows"), py::arg("dim"), py::arg("eps"),
          py::arg("is_bf16"), py::arg("scale_after_rounding"),
          "out [rows, dim] = RMSNorm of x [rows, dim] (both contiguous, fp32 or is_bf16 bf16): r = 1 / "
          "sqrt(mean(x^2) + eps) in fp32, then weight * round(x * r) with weight [dim] in x's dtype "
          "(scale_after_rounding), or round(x * r * gain) with an fp32 gain [dim]. ValueError, writing "
          "nothing, for rows < 0, dim < 1, a bad eps or a null pointer. Releases the GIL.");
}

}  // namespace halo
