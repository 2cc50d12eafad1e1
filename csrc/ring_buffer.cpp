// RingBuffer implementation: slab allocation, the spin-then-park wait, and the acquire/commit/
// release protocol. The stress test is in ring_buffer_stress.cpp, the binding in
// ring_buffer_binding.cpp.
#include "ring_buffer.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <exception>
#include <limits>
#include <new>
#include <string>

#include <sys/mman.h>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

#include "cuda/pinned_memory.h"
#include "ring_buffer_timeout.h"

namespace halo {

namespace {

using wait_time::Clock;
using wait_time::deadline_after;
using wait_time::normalized;

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

}  // namespace halo
