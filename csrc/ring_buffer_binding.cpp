// Python binding of RingBuffer (halo._core.RingBuffer, RingBufferClosed, ring_buffer_stress and
// cuda_enabled): buffer-protocol slot views, push/pop copies, and waits that drop the GIL in
// slices so other threads run and Ctrl-C still interrupts.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <optional>
#include <stdexcept>
#include <string>
#include <utility>

#include "ring_buffer.h"
#include "ring_buffer_timeout.h"

namespace py = pybind11;

namespace halo {

namespace {

using wait_time::Clock;
using wait_time::deadline_after;
using wait_time::normalized;

// Copies at least this large run with the GIL released.
constexpr int64_t kReleaseGilBytes = 256 * 1024;
// A blocked push/pop/acquire wakes this often to let Python handle signals (Ctrl-C).
constexpr double kSignalCheckSeconds = 0.1;

// The bytes of any C-contiguous bytes-like object, held for the duration of a copy.
class BufferView {
 public:
  explicit BufferView(py::handle obj) {
    if (PyObject_GetBuffer(obj.ptr(), &view_, PyBUF_C_CONTIGUOUS) != 0) throw py::error_already_set();
  }
  ~BufferView() { PyBuffer_Release(&view_); }
  BufferView(const BufferView&) = delete;
  BufferView& operator=(const BufferView&) = delete;
  const void* data() const { return view_.buf; }
  int64_t size() const { return static_cast<int64_t>(view_.len); }

 private:
  Py_buffer view_{};
};

void copy_bytes(void* dst, const void* src, int64_t n) {
  if (n >= kReleaseGilBytes) {
    py::gil_scoped_release nogil;
    std::memcpy(dst, src, static_cast<std::size_t>(n));
  } else {
    std::memcpy(dst, src, static_cast<std::size_t>(n));
  }
}

// Runs attempt(slice_seconds) until it returns something other than kTimedOut or the timeout
// passes. The GIL is released inside each slice so other Python threads (the other side of the
// buffer, typically) run; signals are checked between slices so Ctrl-C still interrupts.
template <class Attempt>
int64_t wait_without_gil(Attempt&& attempt, RingBuffer::Timeout timeout) {
  timeout = normalized(timeout);
  // Poll first with the GIL held: dropping and retaking it costs more than most hand-offs, and
  // under contention a thread that drops it may wait a whole switch interval to get it back.
  const int64_t polled = attempt(0.0);
  if (polled != RingBuffer::kTimedOut || (timeout && *timeout == 0)) return polled;
  const auto deadline = deadline_after(timeout);
  for (;;) {
    double slice = kSignalCheckSeconds;
    if (deadline) {
      slice = std::min(slice, std::max(0.0, std::chrono::duration<double>(*deadline - Clock::now()).count()));
    }
    int64_t result = RingBuffer::kTimedOut;
    {
      py::gil_scoped_release nogil;
      result = attempt(slice);
    }
    if (result != RingBuffer::kTimedOut) return result;
    if (deadline && Clock::now() >= *deadline) return RingBuffer::kTimedOut;
    if (PyErr_CheckSignals() != 0) throw py::error_already_set();
  }
}

bool push(RingBuffer& rb, py::handle data, RingBuffer::Timeout timeout) {
  const BufferView src(data);
  if (src.size() > rb.slot_bytes()) {
    throw std::invalid_argument("push: " + std::to_string(src.size()) + " bytes do not fit in a " +
                                std::to_string(rb.slot_bytes()) + "-byte slot");
  }
  const int64_t slot = wait_without_gil([&](double s) { return rb.acquire_write(s); }, timeout);
  if (slot < 0) return false;
  copy_bytes(rb.slot_data(slot), src.data(), src.size());
  rb.commit_write(src.size());
  return true;
}

py::object pop(RingBuffer& rb, RingBuffer::Timeout timeout) {
  const int64_t slot = wait_without_gil([&](double s) { return rb.acquire_read(s); }, timeout);
  if (slot < 0) return py::none();
  const int64_t n = rb.slot_nbytes(slot);
  PyObject* raw = PyBytes_FromStringAndSize(nullptr, static_cast<Py_ssize_t>(n));
  if (raw == nullptr) {
    rb.cancel_read();  // out of memory: leave the item in place rather than lose it
    throw py::error_already_set();
  }
  auto out = py::reinterpret_steal<py::bytes>(raw);
  copy_bytes(PyBytes_AS_STRING(raw), rb.slot_data(slot), n);  // nobody else sees `out` yet
  rb.release_read();
  return std::move(out);
}

}  // namespace

void bind_ring_buffer(py::module_& m) {
  py::register_exception<RingBufferClosed>(m, "RingBufferClosed", PyExc_RuntimeError);
  using Timeout = RingBuffer::Timeout;

  py::class_<RingBuffer>(m, "RingBuffer", py::buffer_protocol(),
                         "Single-producer/single-consumer ring of num_slots fixed-size slots over one "
                         "allocation (page-locked when a CUDA device is present). Slots are read and written "
                         "in place via slot(i) views, or copied with push/pop. The object itself exports the "
                         "whole slab (num_slots * slot_stride bytes) through the buffer protocol.")
      .def(py::init<int64_t, int64_t>(), py::arg("num_slots"), py::arg("slot_bytes"),
           "ValueError unless num_slots >= 1 and slot_bytes >= 1.")
      .def_buffer([](RingBuffer& rb) {
        return py::buffer_info(rb.data(), 1, py::format_descriptor<uint8_t>::format(), 1, {rb.total_bytes()},
                               {int64_t{1}}, /*readonly=*/false);
      })
      .def_property_readonly("num_slots", &RingBuffer::num_slots)
      .def_property_readonly("slot_bytes", &RingBuffer::slot_bytes)
      .def_property_readonly("slot_stride", &RingBuffer::slot_stride,
                             "Bytes from one slot's start to the next: slot_bytes rounded up to 64.")
      .def_property_readonly("pinned", &RingBuffer::pinned, "True when the slab is cudaHostAlloc'd memory.")
      .def_property_readonly("size", &RingBuffer::size, "Items committed and not yet released (a snapshot).")
      .def_property_readonly("closed", &RingBuffer::closed)
      .def(
          "acquire_write",
          [](RingBuffer& rb, Timeout timeout) {
            return wait_without_gil([&](double s) { return rb.acquire_write(s); }, timeout);
          },
          py::arg("timeout") = py::none(),
          "Wait for a free slot (GIL released) and return its index, or -1 after timeout seconds. "
          "RingBufferClosed on a closed buffer. Fill slot(i), then commit_write(nbytes) or cancel_write().")
      .def("commit_write", &RingBuffer::commit_write, py::arg("nbytes"),
           "Publish the acquired slot with nbytes valid bytes. RingBufferClosed (item discarded) if the "
           "buffer was closed since acquire_write.")
      .def("cancel_write", &RingBuffer::cancel_write, "Give the acquired slot back without publishing it.")
      .def(
          "acquire_read",
          [](RingBuffer& rb, Timeout timeout) {
            const int64_t slot = wait_without_gil([&](double s) { return rb.acquire_read(s); }, timeout);
            return slot < 0 ? RingBuffer::kTimedOut : slot;
          },
          py::arg("timeout") = py::none(),
          "Wait for an item (GIL released) and return its slot index; -1 after timeout seconds or when "
          "the buffer is closed and drained. Read slot(i), then release_read() or cancel_read().")
      .def("release_read", &RingBuffer::release_read, "Hand the slot being read back to the producer.")
      .def("cancel_read", &RingBuffer::cancel_read, "Give the acquired slot back unread; it stays next in line.")
      .def(
          "slot",
          [](py::object self, int64_t index) -> py::object {
            RingBuffer& rb = self.cast<RingBuffer&>();
            const int64_t start = rb.slot_data(index) - rb.data();
            // A slice of a memoryview over the whole slab: it holds a reference to this object, so
            // the memory outlives every view (and every tensor torch.frombuffer makes of one).
            auto whole = py::reinterpret_steal<py::object>(PyMemoryView_FromObject(self.ptr()));
            if (!whole) throw py::error_already_set();
            return whole[py::slice(start, start + rb.slot_bytes(), 1)];
          },
          py::arg("index"),
          "Writable memoryview of slot index (slot_bytes long) pointing into the buffer, no copy. "
          "Only meaningful while the slot is acquired: afterwards the other side may reuse it.")
      .def("slot_nbytes", &RingBuffer::slot_nbytes, py::arg("index"),
           "Bytes the producer committed in slot index.")
      .def(
          "try_push", [](RingBuffer& rb, py::handle data) { return push(rb, data, 0.0); }, py::arg("data"),
          "Copy data (bytes-like) into a free slot; False if the buffer is full. ValueError if data is "
          "larger than a slot, RingBufferClosed on a closed buffer.")
      .def("push", &push, py::arg("data"), py::arg("timeout") = py::none(),
           "Like try_push but waits up to timeout seconds (None: for ever) for a free slot, GIL released.")
      .def(
          "try_pop", [](RingBuffer& rb) { return pop(rb, 0.0); },
          "The oldest item as bytes, or None if there is none.")
      .def("pop", &pop, py::arg("timeout") = py::none(),
           "The oldest item as bytes, waiting up to timeout seconds (None: for ever), GIL released. None "
           "on timeout or once the buffer is closed and drained.")
      .def("close", &RingBuffer::close,
           "Refuse further writes and wake every waiter: producers get RingBufferClosed, consumers drain "
           "the remaining items and then get -1/None. Idempotent.")
      .def("__repr__", [](const RingBuffer& rb) {
        return "RingBuffer(num_slots=" + std::to_string(rb.num_slots()) +
               ", slot_bytes=" + std::to_string(rb.slot_bytes()) + ", size=" + std::to_string(rb.size()) +
               (rb.pinned() ? ", pinned" : "") + (rb.closed() ? ", closed" : "") + ")";
      });

  m.def(
      "ring_buffer_stress",
      [](int64_t num_items, int64_t num_slots, int64_t slot_bytes) {
        RingBufferStressResult r;
        {
          py::gil_scoped_release nogil;
          r = ring_buffer_stress(num_items, num_slots, slot_bytes);
        }
        py::dict out;
        out["sent"] = r.sent;
        out["received"] = r.received;
        out["lost"] = r.lost;
        out["duplicated"] = r.duplicated;
        out["out_of_order"] = r.out_of_order;
        out["corrupted"] = r.corrupted;
        out["seconds"] = r.seconds;
        out["items_per_second"] = r.items_per_second;
        out["pinned"] = r.pinned;
        return out;
      },
      py::arg("num_items"), py::arg("num_slots"), py::arg("slot_bytes") = 64,
      "Push num_items sequence-numbered items from a C++ producer thread to a C++ consumer thread "
      "through a fresh RingBuffer (GIL released) and return counts of sent, received, lost, duplicated, "
      "out_of_order and corrupted items, seconds, items_per_second and pinned.");

  m.def(
      "cuda_enabled",
      [] {
#ifdef HALO_WITH_CUDA
        return true;
#else
        return false;
#endif
      },
      "True when this build of halo._core includes the CUDA sources (csrc/cuda). Says nothing about "
      "whether a device is present at run time.");
}
}  // namespace halo
