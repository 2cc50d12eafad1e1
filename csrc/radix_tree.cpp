#include <pybind11/pybind11.h>
namespace py = pybind11;
namespace halo { void bind_radix_tree(py::module_&) {} }
