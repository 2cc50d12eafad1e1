// ring_buffer_stress: the native two-thread self-test of RingBuffer. A C++ producer and consumer
// pass sequence-numbered items through a fresh buffer; the consumer counts lost, duplicated,
// out-of-order and corrupted ones. No pybind11: the binding wraps it with the GIL released.
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <exception>
#include <optional>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "ring_buffer.h"
#include "ring_buffer_timeout.h"

namespace halo {

using wait_time::Clock;

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

}  // namespace halo
