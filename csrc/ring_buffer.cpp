// RingBuffer implementation, the native two-thread stress test, and their Python binding
// (halo._core.RingBuffer, RingBufferClosed, ring_buffer_stress, cuda_enabled).
#include "ring_buffer.h"

#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <exception>
#include <limits>
#include <new>
#include <string>
#include <thread>

#include <sys/mman.h>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

#include "cuda/pinned_memory.h"

namespace py = pybind11;

namespace halo {

namespace {

using Clock = std::chrono::steady_clock;

// Waiting is two-phase: spin while the other thread is likely mid-item, then park on the
// condition variable (a futex) where the other side's next update wakes us. A hand-off between
// cores takes a few hundred ns, but once one side parks, the other pays a wake syscall per item
// and tends to park too; measured on a 2-vCPU VM through a 1-slot buffer, 5 µs of spinning fell
// into that ping-pong (0.05-0.5 M items/s) and 20 µs stayed out of it (~2 M/s), 50 µs gained
// nothing more. No sched_yield phase: with more runnable threads than cores, Linux sends a
// yielding thread to the back for a whole slice while it is not parked and so cannot be woken;
// with two busy processes on 2 cores that made the stress test 10-50x slower in a third of runs.
constexpr auto kSpinTime = std::chrono::microseconds(20);
// Parked waiters also wake on their own this often, so no interleaving can strand one for good.
constexpr auto kMaxPark = std::chrono::milliseconds(50);

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  _mm_pause();
#elif defined(__aarch64__)
  asm volatile("yield" ::: "memory");
#endif
}

// Timeouts beyond this are "for ever": converting them to clock ticks would overflow.
constexpr double kForeverSeconds = 1e9;

RingBuffer::Timeout normalized(RingBuffer::Timeout timeout) {
  if (!timeout) return timeout;
  if (std::isnan(*timeout) || *timeout < 0) {
    throw std::invalid_argument("timeout must be None or >= 0 seconds, got " + std::to_string(*timeout));
  }
  if (*timeout > kForeverSeconds) return std::nullopt;
  return timeout;
}

std::optional<Clock::time_point> deadline_after(RingBuffer::Timeout timeout) {
  if (!timeout) return std::nullopt;
  return Clock::now() + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(*timeout));
}

int64_t checked_stride(int64_t num_slots, int64_t slot_bytes) {
  if (num_slots < 1) throw std::invalid_argument("num_slots must be >= 1, got " + std::to_string(num_slots));
  if (slot_bytes < 1) throw std::invalid_argument("slot_bytes must be >= 1, got " + std::to_string(slot_bytes));
  constexpr int64_t kMax = std::numeric_limits<int64_t>::max();
  if (slot_bytes > kMax - RingBuffer::kSlotAlign ||
      (slot_bytes + RingBuffer::kSlotAlign - 1) / RingBuffer::kSlotAlign * RingBuffer::kSlotAlign >
          kMax / num_slots) {
    throw std::invalid_argument("num_slots * slot_bytes is too large: " + std::to_string(num_slots) + " x " +
                                std::to_string(slot_bytes));
  }
  return (slot_bytes + RingBuffer::kSlotAlign - 1) / RingBuffer::kSlotAlign * RingBuffer::kSlotAlign;
}

class SlabTooLarge : public std::bad_alloc {  // MemoryError in Python, with the size in the message
 public:
  explicit SlabTooLarge(std::size_t bytes)
      : message_("cannot map " + std::to_string(bytes) + " bytes for a RingBuffer slab") {}
  const char* what() const noexcept override { return message_.c_str(); }

 private:
  std::string message_;
};

// Pinned when a CUDA device can use it (cudaMemcpyAsync from it is then truly asynchronous);
// otherwise, or if the driver refuses, anonymous pages from mmap: page-aligned (>= 4096 bytes) and
// zeroed by the kernel, committed as they are touched, and an impossible size fails with
// MemoryError here instead of the OOM killer during a memset. Slot views never expose stale bytes.
Slab allocate_slab(std::size_t bytes) {
  if (cuda::device_available()) {
    if (void* p = cuda::alloc_pinned(bytes)) {
      std::memset(p, 0, bytes);  // pinned memory is committed anyway
      return Slab(static_cast<std::byte*>(p), SlabDeleter{true, bytes});
    }
  }
  void* p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) throw SlabTooLarge(bytes);
  return Slab(static_cast<std::byte*>(p), SlabDeleter{false, bytes});
}

}  // namespace

void SlabDeleter::operator()(std::byte* p) const {
  if (pinned) {
    cuda::free_pinned(p);
  } else {
    munmap(p, bytes);
  }
}

RingBuffer::RingBuffer(int64_t num_slots, int64_t slot_bytes)
    : num_slots_(num_slots),
      slot_bytes_(slot_bytes),
      slot_stride_(checked_stride(num_slots, slot_bytes)),
      slab_(allocate_slab(static_cast<std::size_t>(num_slots * slot_stride_))),
      slot_nbytes_(static_cast<std::size_t>(num_slots), 0) {}

int64_t RingBuffer::size() const {
  // tail first: head only grows, so head >= tail holds even if both move in between.
  const uint64_t tail = tail_.load(std::memory_order_acquire);
  const uint64_t head = head_.load(std::memory_order_acquire) & ~kClosedBit;
  return static_cast<int64_t>(std::min<uint64_t>(head - tail, static_cast<uint64_t>(num_slots_)));
}

std::byte* RingBuffer::slot_data(int64_t index) {
  if (index < 0 || index >= num_slots_) {
    throw std::out_of_range("slot index " + std::to_string(index) + " out of range [0, " +
                            std::to_string(num_slots_) + ")");
  }
  return slab_.get() + index * slot_stride_;
}

int64_t RingBuffer::slot_nbytes(int64_t index) const {
  if (index < 0 || index >= num_slots_) {
    throw std::out_of_range("slot index " + std::to_string(index) + " out of range [0, " +
                            std::to_string(num_slots_) + ")");
  }
  return slot_nbytes_[static_cast<std::size_t>(index)];
}

// Each side is idle, waiting, or holding a slot; checking it turns protocol misuse (acquiring
// twice, two threads on one side) into clear errors instead of two writers in one slot. A load and
// a store, not a CAS: one thread per side is the contract, and Python callers are serialised
// here by the GIL, so the check needs no atomic read-modify-write on the hot path.
void RingBuffer::enter(std::atomic<int>& side, const char* who) {
  const int state = side.load(std::memory_order_relaxed);
  if (state == kIdle) {
    side.store(kWaiting, std::memory_order_relaxed);
    return;
  }
  if (state == kHolding) {
    throw std::logic_error(std::string(who) + ": a slot is already acquired on this side; finish it first");
  }
  throw std::logic_error(std::string(who) +
                         ": another thread is already waiting on this side (a RingBuffer has one producer "
                         "and one consumer)");
}

void RingBuffer::leave(std::atomic<int>& side, const char* who, const char* acquirer) {
  if (side.load(std::memory_order_relaxed) != kHolding) {
    throw std::logic_error(std::string(who) + " without a successful " + acquirer);
  }
  side.store(kIdle, std::memory_order_relaxed);
}

template <class Ready>
bool RingBuffer::wait(Ready&& ready, Timeout timeout) {
  if (ready()) return true;
  if (timeout && *timeout <= 0) return false;
  const auto deadline = deadline_after(timeout);
  const auto expired = [&] { return deadline && Clock::now() >= *deadline; };
  const auto spin_end = Clock::now() + kSpinTime;
  do {
    for (int i = 0; i < 32; ++i) {  // 0.3-1.5 µs of pauses between clock reads
      cpu_relax();
      if (ready()) return true;
    }
  } while (Clock::now() < spin_end);
  for (;;) {
    if (expired()) return false;
    std::unique_lock<std::mutex> lock(park_mutex_);
    // Dekker-style handshake with wake_parked(): our seq_cst increment and fence against the
    // other side's seq_cst publish and load of parked_. Either it sees parked_ > 0 and notifies
    // (after taking park_mutex_, so not before we sleep), or we see its update in ready().
    parked_.fetch_add(1, std::memory_order_seq_cst);
    std::atomic_thread_fence(std::memory_order_seq_cst);
    bool ok = ready();
    if (!ok) {
      auto until = Clock::now() + kMaxPark;
      if (deadline) until = std::min(until, *deadline);
      park_cv_.wait_until(lock, until);
      ok = ready();
    }
    parked_.fetch_sub(1, std::memory_order_relaxed);
    if (ok) return true;
  }
}

// Callers publish their update with a seq_cst operation first; that, with this seq_cst load, is
// the waker's half of the handshake in wait(). No fence: on x86 a locked RMW or xchg already
// orders, where an extra mfence would cost more than the rest of an item.
void RingBuffer::wake_parked() {
  if (parked_.load(std::memory_order_seq_cst) == 0) return;
  std::lock_guard<std::mutex> lock(park_mutex_);
  park_cv_.notify_all();
}

int64_t RingBuffer::acquire_write(Timeout timeout) {
  timeout = normalized(timeout);
  enter(writer_, "acquire_write");
  const auto n = static_cast<uint64_t>(num_slots_);
  uint64_t head = 0;
  const auto writable = [&] {
    head = head_.load(std::memory_order_acquire);
    if ((head & kClosedBit) != 0 || head - cached_tail_ < n) return true;
    // Acquire pairs with release_read(): the consumer is done with the slot we will overwrite.
    cached_tail_ = tail_.load(std::memory_order_acquire);
    return head - cached_tail_ < n;
  };
  const bool ready = wait(writable, timeout);
  if (!ready || (head & kClosedBit) != 0) {
    writer_.store(kIdle, std::memory_order_relaxed);
    if (!ready) return kTimedOut;
    throw RingBufferClosed("acquire_write: the ring buffer is closed");
  }
  writer_.store(kHolding, std::memory_order_relaxed);
  return static_cast<int64_t>(head % n);
}

void RingBuffer::commit_write(int64_t nbytes) {
  if (writer_.load(std::memory_order_relaxed) != kHolding) {
    throw std::logic_error("commit_write without a successful acquire_write");
  }
  if (nbytes < 0 || nbytes > slot_bytes_) {
    throw std::invalid_argument("commit_write: nbytes must be in [0, " + std::to_string(slot_bytes_) +
                                "], got " + std::to_string(nbytes));
  }
  uint64_t head = head_.load(std::memory_order_relaxed);
  slot_nbytes_[(head & ~kClosedBit) % static_cast<uint64_t>(num_slots_)] = nbytes;
  // A CAS rather than a store: close() may set the closed bit concurrently, and whichever lands
  // first decides whether this item is published (see the header).
  for (;;) {
    if ((head & kClosedBit) != 0) {
      writer_.store(kIdle, std::memory_order_relaxed);
      throw RingBufferClosed("commit_write: the ring buffer was closed before the commit; the item was discarded");
    }
    if (head_.compare_exchange_weak(head, head + 1, std::memory_order_seq_cst, std::memory_order_relaxed)) break;
  }
  writer_.store(kIdle, std::memory_order_relaxed);
  wake_parked();
}

void RingBuffer::cancel_write() { leave(writer_, "cancel_write", "acquire_write"); }

int64_t RingBuffer::acquire_read(Timeout timeout) {
  timeout = normalized(timeout);
  enter(reader_, "acquire_read");
  const uint64_t tail = tail_.load(std::memory_order_relaxed);  // only this side stores it
  const auto readable = [&] {
    if (cached_head_ != tail) return true;
    // Acquire pairs with commit_write()'s CAS: the slot's bytes and size are visible.
    const uint64_t head = head_.load(std::memory_order_acquire);
    cached_head_ = head & ~kClosedBit;
    // Closed and empty in one load: no commit can follow a close, so this emptiness is final.
    return cached_head_ != tail || (head & kClosedBit) != 0;
  };
  if (!wait(readable, timeout)) {
    reader_.store(kIdle, std::memory_order_relaxed);
    return kTimedOut;
  }
  if (cached_head_ == tail) {
    reader_.store(kIdle, std::memory_order_relaxed);
    return kClosed;
  }
  reader_.store(kHolding, std::memory_order_relaxed);
  return static_cast<int64_t>(tail % static_cast<uint64_t>(num_slots_));
}

void RingBuffer::release_read() {
  if (reader_.load(std::memory_order_relaxed) != kHolding) {
    throw std::logic_error("release_read without a successful acquire_read");
  }
  tail_.store(tail_.load(std::memory_order_relaxed) + 1, std::memory_order_seq_cst);  // see wake_parked()
  reader_.store(kIdle, std::memory_order_relaxed);
  wake_parked();
}

void RingBuffer::cancel_read() { leave(reader_, "cancel_read", "acquire_read"); }

void RingBuffer::close() {
  head_.fetch_or(kClosedBit, std::memory_order_seq_cst);
  wake_parked();
}

RingBufferStressResult ring_buffer_stress(int64_t num_items, int64_t num_slots, int64_t slot_bytes) {
  if (num_items < 0) throw std::invalid_argument("num_items must be >= 0, got " + std::to_string(num_items));
  // An item carries its sequence number at the front and its complement at the end of what was
  // committed, so a torn or stale slot shows up as corrupted.
  if (slot_bytes < 16) {
    throw std::invalid_argument("slot_bytes must be >= 16 for the stress test, got " + std::to_string(slot_bytes));
  }
  RingBuffer rb(num_slots, slot_bytes);
  const auto items = static_cast<uint64_t>(num_items);
  const auto size_of = [&](uint64_t seq) {  // committed sizes vary over [16, slot_bytes]
    return 16 + static_cast<int64_t>(seq % static_cast<uint64_t>(slot_bytes - 15));
  };

  RingBufferStressResult r;
  r.sent = num_items;
  r.pinned = rb.pinned();
  std::vector<uint8_t> seen(static_cast<std::size_t>(num_items), 0);
  std::exception_ptr producer_error;
  std::exception_ptr consumer_error;

  const auto start = Clock::now();
  std::thread producer([&] {
    try {
      for (uint64_t seq = 0; seq < items; ++seq) {
        std::byte* p = rb.slot_data(rb.acquire_write(std::nullopt));
        const int64_t nbytes = size_of(seq);
        const uint64_t check = ~seq;
        std::memcpy(p, &seq, sizeof seq);
        std::memcpy(p + nbytes - 8, &check, sizeof check);
        rb.commit_write(nbytes);
      }
    } catch (...) {
      producer_error = std::current_exception();
    }
    rb.close();  // also what unblocks the consumer if the producer failed
  });
  std::thread consumer([&] {
    try {
      bool first = true;
      uint64_t last = 0;
      for (;;) {
        const int64_t slot = rb.acquire_read(std::nullopt);
        if (slot == RingBuffer::kClosed) break;
        const std::byte* p = rb.slot_data(slot);
        const int64_t nbytes = rb.slot_nbytes(slot);
        uint64_t seq = 0;
        uint64_t check = 0;
        std::memcpy(&seq, p, sizeof seq);
        if (nbytes >= 16) std::memcpy(&check, p + nbytes - 8, sizeof check);
        rb.release_read();
        ++r.received;
        if (seq >= items || check != ~seq || nbytes != size_of(seq)) {
          ++r.corrupted;
          continue;
        }
        if (seen[seq] != 0) ++r.duplicated;
        seen[seq] = 1;
        if (first ? seq != 0 : seq != last + 1) ++r.out_of_order;
        first = false;
        last = seq;
      }
    } catch (...) {
      consumer_error = std::current_exception();
      rb.close();  // the producer would otherwise block on a full buffer for ever
    }
  });
  producer.join();
  consumer.join();
  r.seconds = std::chrono::duration<double>(Clock::now() - start).count();
  if (producer_error) std::rethrow_exception(producer_error);
  if (consumer_error) std::rethrow_exception(consumer_error);
  r.lost = static_cast<int64_t>(std::count(seen.begin(), seen.end(), uint8_t{0}));
  r.items_per_second = r.seconds > 0 ? static_cast<double>(r.received) / r.seconds : 0.0;
  return r;
}

// ---------------------------------------------------------------------------------------------
// Python binding

namespace {

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
