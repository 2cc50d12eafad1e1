// CpuNorm (see cpu_norm.h): the per-row kernel, its per-ISA entry points and the split into row
// blocks. The Python binding is in cpu_norm_binding.cpp.
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

// Rows [r0, r1). Sum of squares: W lanes of partial sums over the whole vectors, folded in a fixed
// tree, then the tail in order; the scale is a correctly rounded 1 / sqrt.
template <int W, typename T>
HALO_INLINE void norm_rows(const NormArgs& a, int64_t r0, int64_t r1) {
  using F = typename Vec<W>::f;
  const int64_t D = a.dim, Dw = D / W * W;
  const T* x = static_cast<const T*>(a.x);
  T* out = static_cast<T*>(a.out);
  const T* weight = static_cast<const T*>(a.weight);    // scale_after_rounding
  const float* gain = static_cast<const float*>(a.weight);  // else
  const T* tag = nullptr;  // picks round_to's overload for T
  for (int64_t r = r0; r < r1; ++r) {
    const T* xr = x + r * D;
    T* o = out + r * D;
    F acc = {};
    for (int64_t d = 0; d < Dw; d += W) {
      const F v = load_f32<W>(xr + d);
      acc += v * v;
    }
    float ss = horizontal<W>(acc, [](const F& p, const F& q) { return p + q; });
    for (int64_t d = Dw; d < D; ++d) ss += to_f32(xr[d]) * to_f32(xr[d]);
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

HALO_TARGET("arch=x86-64-v4") void norm_avx512_f32(const NormArgs& a, int64_t r0, int64_t r1) { norm_rows<16, float>(a, r0, r1); }
HALO_TARGET("arch=x86-64-v4") void norm_avx512_bf16(const NormArgs& a, int64_t r0, int64_t r1) { norm_rows<16, bf16>(a, r0, r1); }
HALO_TARGET("arch=x86-64-v3") void norm_avx2_f32(const NormArgs& a, int64_t r0, int64_t r1) { norm_rows<8, float>(a, r0, r1); }
HALO_TARGET("arch=x86-64-v3") void norm_avx2_bf16(const NormArgs& a, int64_t r0, int64_t r1) { norm_rows<8, bf16>(a, r0, r1); }
__attribute__((noinline)) void norm_generic_f32(const NormArgs& a, int64_t r0, int64_t r1) { norm_rows<4, float>(a, r0, r1); }
__attribute__((noinline)) void norm_generic_bf16(const NormArgs& a, int64_t r0, int64_t r1) { norm_rows<4, bf16>(a, r0, r1); }

using RowsFn = void (*)(const NormArgs&, int64_t, int64_t);

RowsFn pick(Isa isa, bool is_bf16) {
  switch (isa) {
    case Isa::kAvx512:
      return is_bf16 ? norm_avx512_bf16 : norm_avx512_f32;
    case Isa::kAvx2:
      return is_bf16 ? norm_avx2_bf16 : norm_avx2_f32;
    case Isa::kGeneric:
      break;
  }
  return is_bf16 ? norm_generic_bf16 : norm_generic_f32;
}

[[noreturn]] void fail(const std::string& message) { throw std::invalid_argument("CpuNorm.rms_norm: " + message); }

}  // namespace

CpuNorm::CpuNorm(int num_threads, Isa isa, Threads threads) : isa_(isa), pool_(num_threads, threads) {
  if (static_cast<int>(isa) > static_cast<int>(best_isa())) {
    throw std::invalid_argument("this CPU cannot run isa '" + isa_name(isa) + "' (best: '" + isa_name(best_isa()) +
                                "')");
  }
}

void CpuNorm::rms_norm(const NormArgs& a) {
  if (a.rows < 0 || a.dim < 1) {
    fail("rows must be >= 0 and dim >= 1, got " + std::to_string(a.rows) + ", " + std::to_string(a.dim));
  }
  if (!std::isfinite(a.eps) || a.eps < 0.0f) fail("eps must be finite and >= 0");
  if (a.rows == 0) return;
  if (!a.x || !a.weight || !a.out) fail("null pointer");
  const RowsFn rows_fn = pick(isa_, a.is_bf16);
  std::lock_guard<std::mutex> call(call_mutex_);
  if (a.rows * a.dim < kInline) {
    rows_fn(a, 0, a.rows);
    return;
  }
  const int64_t tasks = (a.rows + kRowsPerTask - 1) / kRowsPerTask;
  pool_.run(tasks, [&](int64_t i, int) { rows_fn(a, i * kRowsPerTask, std::min(a.rows, (i + 1) * kRowsPerTask)); });
}

}  // namespace halo
