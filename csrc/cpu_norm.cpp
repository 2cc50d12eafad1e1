// CpuNorm (see cpu_norm.h): the per-row kernel, its per-ISA entry points and the split into row
// blocks. Built with -ffp-contract=off (CMakeLists.txt): each square is rounded before it is summed,
// as torch's pow then sum. The Python binding is in cpu_norm_binding.cpp.
#include "cpu_norm.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <string>

#include "cpu_vec.h"

namespace halo {

namespace {

using namespace cpu_vec;

// Rows per task. Fixed, not derived from the thread count, so a row's task never depends on it; a
// call of fewer elements than kInline runs on the caller alone (waking a thread costs more).
constexpr int64_t kRowsPerTask = 16;
constexpr int64_t kInline = 16384;

// ceil(log2(x)), 1 for x <= 2: c10::utils::CeilLog2, which sizes torch's cascade below.
int64_t ceil_log2(int64_t x) {
  if (x <= 2) return 1;
  int64_t bits = 0;
  for (uint64_t v = static_cast<uint64_t>(x) - 1; v; v >>= 1) ++bits;
  return bits;
}

// The squares of vector v of x, each rounded on its own.
template <int W, typename T>
HALO_INLINE typename Vec<W>::f square(const T* x, int64_t v) {
  const typename Vec<W>::f f = load_f32<W>(x + v * W);
  return f * f;
}

// sum(x^2) over a row, in the order torch sums x.float().pow(2) over its last dim (ATen's cascade_sum,
// vectorized_inner_sum), whatever this kernel's ISA: torch runs its 8-lane (AVX2) sum kernel on
// AVX-512 machines too, so the order is that of 8-lane vectors (GCC lowers them to whatever the target
// has). Each square rounded on its own (this file is built with -ffp-contract=off); whole vectors into
// four interleaved accumulators with a four-level cascade once a row has 16 or more of them per
// accumulator; the vectors left over into the first, the other three added to it in order; then the
// elements past the last whole vector from zero, in order, and the accumulator's lanes one by one.
// Same order, same bits (checked against torch over every row of random matrices of several widths,
// tests/test_rms_norm.py): the native path moves no output of the torch one.
template <typename T>
HALO_INLINE float sum_of_squares(const T* x, int64_t D) {
  constexpr int W = 8;
  using F = typename Vec<W>::f;
  constexpr int kRows = 4, kLevels = 4;
  const int64_t vectors = D / W, groups = vectors / kRows;
  const int64_t level_power = std::max<int64_t>(4, ceil_log2(groups) / kLevels);
  const int64_t level_step = int64_t{1} << level_power, level_mask = level_step - 1;
  F acc[kRows][kLevels] = {};
  int64_t i = 0;
  while (i + level_step <= groups) {
    for (int64_t j = 0; j < level_step; ++j, ++i) {
      for (int k = 0; k < kRows; ++k) acc[k][0] += square<W>(x, i * kRows + k);
    }
    for (int j = 1; j < kLevels; ++j) {
      for (int k = 0; k < kRows; ++k) {
        acc[k][j] += acc[k][j - 1];
        acc[k][j - 1] = F{};
      }
      if ((i & (level_mask << (j * level_power))) != 0) break;
    }
  }
  for (; i < groups; ++i) {
    for (int k = 0; k < kRows; ++k) acc[k][0] += square<W>(x, i * kRows + k);
  }
  for (int j = 1; j < kLevels; ++j) {
    for (int k = 0; k < kRows; ++k) acc[k][0] += acc[k][j];
  }
  F total = acc[0][0];
  for (int64_t v = groups * kRows; v < vectors; ++v) total += square<W>(x, v);
  for (int k = 1; k < kRows; ++k) total += acc[k][0];
  float sum = 0.0f;
  for (int64_t d = vectors * W; d < D; ++d) {
    const float f = to_f32(x[d]);
    sum += f * f;
  }
  for (int lane = 0; lane < W; ++lane) sum += total[lane];
  return sum;
}

// Rows [r0, r1): r = 1 / sqrt(mean(x^2) + eps) as torch computes it (the sum above, then a division by
// the dim, the add and a correctly rounded 1 / sqrt), then the family's scaling.
template <int W, typename T>
HALO_INLINE void norm_rows(const NormArgs& a, int64_t r0, int64_t r1) {
  const int64_t D = a.dim, Dw = D / W * W;
  const T* x = static_cast<const T*>(a.x);
  T* out = static_cast<T*>(a.out);
  const T* weight = static_cast<const T*>(a.weight);    // scale_after_rounding
  const float* gain = static_cast<const float*>(a.weight);  // else
  const T* tag = nullptr;  // picks round_to's overload for T
  for (int64_t r = r0; r < r1; ++r) {
    const T* xr = x + r * D;
    T* o = out + r * D;
    const float ss = sum_of_squares(xr, D);
    const float scale = 1.0f / std::sqrt(ss / static_cast<float>(D) + a.eps);
    if (a.scale_after_rounding) {
      for (int64_t d = 0; d < Dw; d += W) {
        store_vec<W>(o + d, load_f32<W>(weight + d) * round_to<W>(load_f32<W>(xr + d) * scale, tag));
      }
      for (int64_t d = Dw; d < D; ++d) store_out(to_f32(weight[d]) * round_to(to_f32(xr[d]) * scale, tag), o + d);
    } else {
      for (int64_t d = 0; d < Dw; d += W) store_vec<W>(o + d, load_f32<W>(xr + d) * scale * load<W>(gain + d));
      for (int64_t d = Dw; d < D; ++d) store_out(to_f32(xr[d]) * scale * gain[d], o + d);
    }
  }
}

HALO_ROW_KERNEL_ENTRIES(norm, NormArgs, norm_rows)

[[noreturn]] void fail(const std::string& message) { throw std::invalid_argument("CpuNorm.rms_norm: " + message); }

}  // namespace

CpuNorm::CpuNorm(int num_threads, Isa isa, Threads threads) : isa_(require_isa(isa)), pool_(num_threads, threads) {}

void CpuNorm::rms_norm(const NormArgs& a) {
  if (a.rows < 0 || a.dim < 1) {
    fail("rows must be >= 0 and dim >= 1, got " + std::to_string(a.rows) + ", " + std::to_string(a.dim));
  }
  if (!std::isfinite(a.eps) || a.eps < 0.0f) fail("eps must be finite and >= 0");
  if (a.rows == 0) return;
  if (!a.x || !a.weight || !a.out) fail("null pointer");
  const norm_fn rows_fn = norm_pick(isa_, a.is_bf16);
  if (a.rows * a.dim < kInline) {
    rows_fn(a, 0, a.rows);
    return;
  }
  const int64_t tasks = (a.rows + kRowsPerTask - 1) / kRowsPerTask;
  pool_.run(tasks, [&](int64_t i, int) { rows_fn(a, i * kRowsPerTask, std::min(a.rows, (i + 1) * kRowsPerTask)); });
}

}  // namespace halo
