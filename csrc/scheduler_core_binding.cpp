// Python binding of SchedulerCore (halo._core.SchedulerCore, halo._core.SchedulerStateError):
// integer arrays in (int32/int64 read in place, other integer inputs converted once), int32 node
// arrays out, and the GIL released for construction and large complete() batches.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <limits>
#include <memory>
#include <string>
#include <type_traits>
#include <vector>

#include "scheduler_core.h"

namespace py = pybind11;

namespace halo {

namespace {

using NodeId = SchedulerCore::NodeId;
template <typename T>
using CArray = py::array_t<T, py::array::c_style>;

// complete() batches at least this large run with the GIL released.
constexpr size_t kReleaseGilIds = 4096;

template <typename T>
CArray<T> ensure_as(const py::array& array) {
  auto out = py::array_t<T, py::array::c_style | py::array::forcecast>::ensure(array);
  if (!out) throw py::error_already_set();
  return out;
}

// obj as a 1-D C-contiguous array of T, read in place when it already is one; other integer arrays
// and sequences are converted once. TypeError for a non-integer dtype, ValueError for another
// shape or a value that does not fit T.
template <typename T>
CArray<T> integer_array(const py::object& obj, const std::string& name) {
  const auto array = py::array::ensure(obj);
  if (!array) throw py::type_error(name + " must be a 1-D integer array or sequence of ints");
  if (array.ndim() != 1) {
    throw py::value_error(name + " must be 1-D, got " + std::to_string(array.ndim()) + "-D");
  }
  const char kind = array.dtype().kind();
  if (array.size() == 0) return CArray<T>(0);  // [] arrives as float64
  if (kind != 'i' && kind != 'u') {
    throw py::type_error(name + " must have an integer dtype, got " + std::string(py::str(array.dtype())));
  }
  if (kind == 'i' && array.itemsize() == sizeof(T)) return ensure_as<T>(array);
  if (kind == 'u' && array.itemsize() == 8) {
    const auto wide = ensure_as<uint64_t>(array);
    for (py::ssize_t i = 0; i < wide.size(); ++i) {
      if (wide.data()[i] > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
        throw py::value_error(name + "[" + std::to_string(i) + "] = " + std::to_string(wide.data()[i]) +
                              " does not fit int64");
      }
    }
  }
  const auto wide = ensure_as<int64_t>(array);
  if constexpr (std::is_same_v<T, int64_t>) {
    return wide;
  } else {
    for (py::ssize_t i = 0; i < wide.size(); ++i) {
      const int64_t v = wide.data()[i];
      if (v < std::numeric_limits<T>::min() || v > std::numeric_limits<T>::max()) {
        throw py::value_error(name + "[" + std::to_string(i) + "] = " + std::to_string(v) + " does not fit int32");
      }
    }
    return ensure_as<T>(wide);
  }
}

py::array_t<NodeId> node_array(const std::vector<NodeId>& nodes) {
  py::array_t<NodeId> out(static_cast<py::ssize_t>(nodes.size()));
  if (!nodes.empty()) std::memcpy(out.mutable_data(), nodes.data(), nodes.size() * sizeof(NodeId));
  return out;
}

// Completes ids with the GIL released when the batch is large.
template <typename T>
std::vector<NodeId> complete_batch(SchedulerCore& core, const T* ids, size_t n) {
  if (n < kReleaseGilIds) return core.complete(ids, n);
  py::gil_scoped_release nogil;
  return core.complete(ids, n);
}

std::unique_ptr<SchedulerCore> make_core(const py::object& upstream_offsets, const py::object& upstream_indices,
                                         const py::object& queue, const py::object& priority, int64_t num_queues) {
  const auto offsets = integer_array<int64_t>(upstream_offsets, "upstream_offsets");
  const auto indices = integer_array<int32_t>(upstream_indices, "upstream_indices");
  const auto queues = integer_array<int32_t>(queue, "queue");
  const auto priorities = integer_array<int64_t>(priority, "priority");
  if (num_queues < -1) {
    throw py::value_error("num_queues must be >= 0, or -1 for max(queue) + 1, got " + std::to_string(num_queues));
  }
  py::gil_scoped_release nogil;
  return std::make_unique<SchedulerCore>(offsets.data(), static_cast<size_t>(offsets.size()), indices.data(),
                                         static_cast<size_t>(indices.size()), queues.data(),
                                         static_cast<size_t>(queues.size()), priorities.data(),
                                         static_cast<size_t>(priorities.size()), num_queues);
}

}  // namespace

void bind_scheduler_core(py::module_& m) {
  auto& state_error =
      py::register_exception<SchedulerStateError>(m, "SchedulerStateError", PyExc_RuntimeError);
  state_error.attr("__doc__") =
      "Raised by SchedulerCore for an illegal transition (completing a DONE node, requeueing a "
      "RUNNING one, ...); the message names the node and its state. Nothing was changed.";

  py::class_<SchedulerCore> cls(
      m, "SchedulerCore",
      "Readiness of every physical node of a consolidated batch. A node is READY once every upstream "
      "is DONE; pop(queue) hands out a queue's READY nodes in (priority, id) order, complete() and "
      "fail() report back. States: PENDING, READY, RUNNING, DONE, FAILED, CANCELLED (class "
      "attributes, ints; DONE and after are terminal).\n\n"
      "Not thread-safe: drive it from one Python thread. An overlapping call from another thread "
      "(possible while a call runs with the GIL released) raises RuntimeError.");
  cls.attr("PENDING") = static_cast<int>(SchedulerCore::kPending);
  cls.attr("READY") = static_cast<int>(SchedulerCore::kReady);
  cls.attr("RUNNING") = static_cast<int>(SchedulerCore::kRunning);
  cls.attr("DONE") = static_cast<int>(SchedulerCore::kDone);
  cls.attr("FAILED") = static_cast<int>(SchedulerCore::kFailed);
  cls.attr("CANCELLED") = static_cast<int>(SchedulerCore::kCancelled);
  cls.attr("STATE_NAMES") = py::make_tuple("PENDING", "READY", "RUNNING", "DONE", "FAILED", "CANCELLED");

  cls.def(py::init(&make_core), py::arg("upstream_offsets"), py::arg("upstream_indices"), py::arg("queue"),
          py::arg("priority"), py::kw_only(), py::arg("num_queues") = -1,
          "Nodes 0..n-1; node i waits for upstream_indices[upstream_offsets[i]:upstream_offsets[i+1]] "
          "(repeats allowed). queue[i] >= 0: the ready queue node i is handed out from; num_queues "
          "defaults to max(queue) + 1 (pass more to leave room for queues with no node yet, e.g. an "
          "idle worker to requeue onto). priority[i]: smaller is handed out first, ties by id. Nodes "
          "with no upstream start READY. Arrays: upstream_offsets int64 (n+1,), upstream_indices "
          "int32, queue int32 (n,), priority int64 (n,); other integer arrays or sequences are "
          "converted. ValueError naming the entry for a wrong shape or length, offsets not starting at "
          "0, decreasing or not ending at len(upstream_indices), an index out of range, a "
          "self-dependency, a negative queue, or a cycle (naming one node on it); TypeError for a "
          "non-integer dtype. Releases the GIL while building.")
      .def_property_readonly("num_nodes", &SchedulerCore::num_nodes, "Number of nodes n.")
      .def_property_readonly("num_queues", &SchedulerCore::num_queues, "Number of ready queues.")
      .def_property_readonly("num_edges", &SchedulerCore::num_edges,
                             "len(upstream_indices): dependency entries, repeats counted.")
      .def_property_readonly("remaining", &SchedulerCore::remaining,
                             "Nodes not in a terminal state (DONE, FAILED, CANCELLED).")
      .def_property_readonly("running", &SchedulerCore::running,
                             "Nodes in state RUNNING (handed out, not yet reported). A running node "
                             "cancelled by an upstream failure no longer counts.")
      .def_property_readonly("finished", &SchedulerCore::finished, "True when remaining == 0.")
      .def("ready_count", &SchedulerCore::ready_count, py::arg("queue"),
           "Number of READY nodes in queue. ValueError if queue is out of range.")
      .def(
          "pop",
          [](SchedulerCore& core, int64_t queue, int64_t max_items) {
            return node_array(core.pop(queue, max_items));
          },
          py::arg("queue"), py::arg("max_items") = -1,
          "Up to max_items (-1: all) READY nodes of queue, smallest (priority, id) first, as an int32 "
          "array; they become RUNNING. ValueError if queue is out of range or max_items < -1.")
      .def(
          "complete",
          [](SchedulerCore& core, const py::object& ids) {
            if (PyLong_Check(ids.ptr())) {
              const int64_t id = ids.cast<int64_t>();
              return node_array(core.complete(&id, 1));
            }
            const auto array = py::array::ensure(ids);
            if (array && array.ndim() == 1 && array.dtype().kind() == 'i' && array.itemsize() == 4) {
              const auto view = integer_array<int32_t>(array, "ids");
              return node_array(complete_batch(core, view.data(), static_cast<size_t>(view.size())));
            }
            const auto view = integer_array<int64_t>(ids, "ids");
            return node_array(complete_batch(core, view.data(), static_cast<size_t>(view.size())));
          },
          py::arg("ids"),
          "Mark ids (an int, a sequence of ints or a 1-D integer array) DONE, from PENDING, READY (it "
          "leaves its queue) or RUNNING; completing a PENDING node is how resumed or skipped work is "
          "recorded. Returns the int32 ids, ascending, of the nodes this made READY (and that still "
          "are). All-or-nothing: ValueError for an id out of range, SchedulerStateError for an id "
          "that is DONE, FAILED or CANCELLED or listed twice, and nothing changes. A node cancelled "
          "while RUNNING is the exception: its one late complete() (or fail()) is ignored silently. "
          "Releases the GIL for batches of 4096 ids or more.")
      .def(
          "fail", [](SchedulerCore& core, int64_t id) { return node_array(core.fail(id)); }, py::arg("id"),
          "Mark id FAILED (from PENDING, READY or RUNNING) and every transitive descendant that is not "
          "terminal CANCELLED, leaving its queue if READY. A RUNNING descendant is cancelled too; its "
          "one late complete() or fail() is then ignored and returns nothing, so the caller may report "
          "it as usual. Returns the cancelled ids, ascending (int32). SchedulerStateError if id is "
          "already terminal.")
      .def("requeue", &SchedulerCore::requeue, py::arg("id"), py::arg("queue"),
           "Move a READY or PENDING node to another queue (a READY one is handed out from there, in "
           "priority order). SchedulerStateError if it is RUNNING or terminal; ValueError if id or "
           "queue is out of range.")
      .def("set_priority", &SchedulerCore::set_priority, py::arg("id"), py::arg("priority"),
           "Change the priority of a READY or PENDING node. SchedulerStateError otherwise.")
      .def(
          "state", [](const SchedulerCore& core, int64_t id) { return static_cast<int>(core.state(id)); },
          py::arg("id"), "State of node id (an int, one of the class constants). ValueError if out of range.")
      .def(
          "states",
          [](const SchedulerCore& core) {
            py::array_t<int8_t> out(static_cast<py::ssize_t>(core.num_nodes()));
            core.copy_states(out.mutable_data());
            return out;
          },
          "A copy of every node's state, an int8 array of length num_nodes.")
      .def("__repr__", [](const SchedulerCore& core) {
        return "SchedulerCore(num_nodes=" + std::to_string(core.num_nodes()) +
               ", num_queues=" + std::to_string(core.num_queues()) +
               ", remaining=" + std::to_string(core.remaining()) + ", running=" + std::to_string(core.running()) +
               ")";
      });
}

}  // namespace halo
