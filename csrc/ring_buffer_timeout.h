// Timeout arithmetic shared by RingBuffer, its stress test and its Python binding: validating a
// timeout in seconds and turning it into a deadline on the steady clock.
#pragma once

#include <chrono>
#include <cmath>
#include <optional>
#include <stdexcept>
#include <string>

namespace halo::wait_time {

using Clock = std::chrono::steady_clock;

// Timeouts beyond this are "for ever": converting them to clock ticks would overflow.
constexpr double kForeverSeconds = 1e9;

// Seconds, as RingBuffer::Timeout: nullopt waits for ever, 0 polls once. std::invalid_argument
// for NaN or a negative value; anything above kForeverSeconds becomes nullopt.
inline std::optional<double> normalized(std::optional<double> timeout) {
  if (!timeout) return timeout;
  if (std::isnan(*timeout) || *timeout < 0) {
    throw std::invalid_argument("timeout must be None or >= 0 seconds, got " + std::to_string(*timeout));
  }
  if (*timeout > kForeverSeconds) return std::nullopt;
  return timeout;
}

inline std::optional<Clock::time_point> deadline_after(std::optional<double> timeout) {
  if (!timeout) return std::nullopt;
  return Clock::now() + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(*timeout));
}

}  // namespace halo::wait_time
