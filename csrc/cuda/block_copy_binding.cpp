// Python binding of the CUDA block copy (halo._core.cuda_copy_blocks). Host-compiled, and part of
// the build only with HALO_CUDA=ON and a CUDA compiler; halo._core.cuda_enabled() says which.
#include <pybind11/pybind11.h>

#include <cstdint>

#include "block_copy.h"

namespace py = pybind11;

namespace halo {

void bind_cuda_block_copy(py::module_& m) {
  m.def("cuda_copy_blocks", &cuda::copy_blocks, py::arg("src_ptr"), py::arg("dst_ptr"), py::arg("block_bytes"),
        py::arg("src_ids_ptr"), py::arg("dst_ids_ptr"), py::arg("num_blocks"), py::arg("stream") = 0,
        // A launch can block when the stream's queue is full; other Python threads keep running.
        py::call_guard<py::gil_scoped_release>(),
        "Copy block src_ids[i] of the device pool at src_ptr onto block dst_ids[i] of the pool at dst_ptr "
        "for i < num_blocks, asynchronously on stream (an int cudaStream_t; 0 = default stream). Pointers "
        "are raw device addresses (tensor.data_ptr()); ids are int64 device arrays. Ids are not "
        "bounds-checked and no destination block may also be a source in the same call.");
}

}  // namespace halo
