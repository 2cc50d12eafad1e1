// RingBuffer: fixed-size slots over one allocation, handed from one producer thread to one consumer
// thread through lock-free head/tail counters. It is the staging area for host<->device pipelining
// (KV offload/prefetch), so its memory is page-locked when a CUDA device can use it.
// Plain C++ (no pybind11) so other native components and the stress test drive it directly.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <vector>

namespace halo {

// Raised to a producer that tries to write into a closed buffer. Distinct from protocol misuse
// (std::logic_error) because it is the normal end of a stream, not a bug.
class RingBufferClosed : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// Frees the slab the way it was allocated (cudaFreeHost or munmap).
struct SlabDeleter {
  bool pinned = false;
  std::size_t bytes = 0;
  void operator()(std::byte* p) const;
};
using Slab = std::unique_ptr<std::byte, SlabDeleter>;

class RingBuffer {
 public:
  static constexpr int64_t kTimedOut = -1;
  static constexpr int64_t kClosed = -2;  // from acquire_read: closed and every item read
  // Slots start on cache-line boundaries: any dtype is aligned in a slot view, and the producer
  // filling slot i+1 does not share a line with the consumer reading slot i.
  static constexpr int64_t kSlotAlign = 64;

  // Timeouts are in seconds; nullopt waits for ever, 0 polls once without waiting.
  using Timeout = std::optional<double>;

  RingBuffer(int64_t num_slots, int64_t slot_bytes);
  RingBuffer(const RingBuffer&) = delete;
  RingBuffer& operator=(const RingBuffer&) = delete;

  int64_t num_slots() const { return num_slots_; }
  int64_t slot_bytes() const { return slot_bytes_; }
  int64_t slot_stride() const { return slot_stride_; }
  int64_t total_bytes() const { return num_slots_ * slot_stride_; }
  bool pinned() const { return slab_.get_deleter().pinned; }
  std::byte* data() { return slab_.get(); }
  int64_t size() const;  // items committed and not yet released, a snapshot
  bool closed() const { return (head_.load(std::memory_order_acquire) & kClosedBit) != 0; }

  std::byte* slot_data(int64_t index);  // std::out_of_range outside [0, num_slots)
  int64_t slot_nbytes(int64_t index) const;

  // Protocol, producer side: acquire_write -> fill slot_data(i) -> commit_write (or cancel_write).
  // Returns the slot index or kTimedOut; throws RingBufferClosed once the buffer is closed.
  int64_t acquire_write(Timeout timeout);
  // Publishes the acquired slot with nbytes valid bytes. Throws RingBufferClosed, discarding the
  // item, if close() came first: close and commit are ordered, so a consumer that saw the buffer
  // closed and drained can never miss a late item.
  void commit_write(int64_t nbytes);
  void cancel_write();  // give the acquired slot back unwritten

  // Consumer side: acquire_read -> read slot_data(i) -> release_read (or cancel_read).
  // Returns the slot index, kTimedOut, or kClosed when closed and drained.
  int64_t acquire_read(Timeout timeout);
  void release_read();
  void cancel_read();  // give the acquired slot back unread: it stays first in line

  // No new writes; wakes every waiter. Consumers still drain what was committed before.
  void close();

 private:
  // The closed flag lives in head_'s top bit so that commit and close order on one atomic.
  static constexpr uint64_t kClosedBit = uint64_t{1} << 63;
  enum Side : int { kIdle = 0, kWaiting = 1, kHolding = 2 };

  void enter(std::atomic<int>& side, const char* who);
  void leave(std::atomic<int>& side, const char* who, const char* acquirer);
  template <class Ready>
  bool wait(Ready&& ready, Timeout timeout);
  void wake_parked();

  const int64_t num_slots_;
  const int64_t slot_bytes_;
  const int64_t slot_stride_;
  Slab slab_;
  std::vector<int64_t> slot_nbytes_;  // committed sizes, written before head_ publishes them

  // Monotonic counters (slot = counter % num_slots). Shared indices and each side's private
  // state sit on separate cache lines: the other thread's copy of head_ or tail_ is invalidated
  // once per item, not on every bookkeeping store.
  alignas(64) std::atomic<uint64_t> head_{0};  // next write; only the producer and close() store
  alignas(64) std::atomic<uint64_t> tail_{0};  // next read; only the consumer stores
  alignas(64) uint64_t cached_tail_ = 0;       // producer's last look at tail_
  std::atomic<int> writer_{kIdle};
  alignas(64) uint64_t cached_head_ = 0;       // consumer's last look at head_
  std::atomic<int> reader_{kIdle};

  // Parking for long waits: a waiter announces itself in parked_ and sleeps on the condition
  // variable; the other side notifies only when someone is parked, so the fast path stays lock-free.
  alignas(64) std::atomic<int> parked_{0};
  std::mutex park_mutex_;
  std::condition_variable park_cv_;
};

// Result of the native two-thread stress test: sequence-numbered items pushed through the buffer.
struct RingBufferStressResult {
  int64_t sent = 0;
  int64_t received = 0;
  int64_t lost = 0;          // sent but never received
  int64_t duplicated = 0;    // received more than once
  int64_t out_of_order = 0;  // received other than right after its predecessor
  int64_t corrupted = 0;     // payload or committed size not what the producer wrote
  double seconds = 0.0;
  double items_per_second = 0.0;
  bool pinned = false;
};

// Runs a producer and a consumer thread over a fresh RingBuffer(num_slots, slot_bytes); the
// producer closes the buffer after its last item and the consumer reads until drained.
RingBufferStressResult ring_buffer_stress(int64_t num_items, int64_t num_slots, int64_t slot_bytes);

}  // namespace halo
