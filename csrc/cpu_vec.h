// Vector helpers of the CPU kernels (cpu_attention.cpp, cpu_norm.cpp, cpu_rope.cpp): GCC vector types of W floats,
// loads and stores, bf16 <-> fp32, and horizontal folds in a fixed order. Every helper is
// always_inline into the kernels' per-ISA entry points (target attributes), so one template serves
// AVX-512 (W = 16), AVX2 (8) and portable code (4), and a given ISA always computes the same bits.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <utility>

#include "cpu_isa.h"

namespace halo {
namespace cpu_vec {

// GCC vector extensions: W floats per operation (16 = one zmm register, 8 = ymm, 4 = xmm). They
// are plain IEEE arithmetic lane by lane, so nothing depends on -ffast-math; each ISA entry point
// below instantiates the kernel with its own W. Every helper is always_inline into those entry
// points: no vector ever crosses a call boundary, so the psabi note GCC gives is moot.
#pragma GCC diagnostic ignored "-Wpsabi"
template <int W>
struct Vec;
template <>
struct Vec<16> {
  typedef float f __attribute__((vector_size(64)));
  typedef int32_t i __attribute__((vector_size(64)));
  typedef uint32_t u __attribute__((vector_size(64)));
  typedef uint16_t h __attribute__((vector_size(32)));
};
template <>
struct Vec<8> {
  typedef float f __attribute__((vector_size(32)));
  typedef int32_t i __attribute__((vector_size(32)));
  typedef uint32_t u __attribute__((vector_size(32)));
  typedef uint16_t h __attribute__((vector_size(16)));
};
template <>
struct Vec<4> {
  typedef float f __attribute__((vector_size(16)));
  typedef int32_t i __attribute__((vector_size(16)));
  typedef uint32_t u __attribute__((vector_size(16)));
  typedef uint16_t h __attribute__((vector_size(8)));
};

#define HALO_INLINE inline __attribute__((always_inline))

// A kernel's per-ISA entry point: compiled for that ISA whatever the build's flags, never inlined
// into code compiled for less (not target_clones: each ISA wants its own vector width W).
#if defined(__x86_64__)
#define HALO_TARGET(isa) __attribute__((target(isa), noinline))
#else
#define HALO_TARGET(isa) __attribute__((noinline))
#endif

using bf16 = uint16_t;

HALO_INLINE float to_f32(float x) { return x; }
HALO_INLINE float to_f32(bf16 x) {
  uint32_t bits = static_cast<uint32_t>(x) << 16;  // bf16 is the top half of an fp32
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

HALO_INLINE void store_out(float x, float* out) { *out = x; }
HALO_INLINE void store_out(float x, bf16* out) {
  uint32_t bits;
  std::memcpy(&bits, &x, sizeof bits);
  if (std::isnan(x)) {
    *out = 0x7fc0;  // rounding could carry a NaN's payload into infinity
    return;
  }
  bits += 0x7fffu + ((bits >> 16) & 1u);  // round to nearest, ties to even
  *out = static_cast<bf16>(bits >> 16);
}

template <int W>
HALO_INLINE typename Vec<W>::f load(const float* p) {
  typename Vec<W>::f v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
template <int W>
HALO_INLINE void store(float* p, const typename Vec<W>::f& v) {
  std::memcpy(p, &v, sizeof v);
}

// bf16 -> fp32 for W values at once: each 16-bit value becomes the high half of a 32-bit lane
// whose low half is zero (little-endian), a single two-source shuffle.
constexpr int zero_then_value(int W, int k) { return k % 2 ? W + k / 2 : 0; }

template <int W, size_t... K>
HALO_INLINE typename Vec<W>::u interleave_zeros(const typename Vec<W>::h& h, std::index_sequence<K...>) {
  const typename Vec<W>::h zero = {};
  return __builtin_bit_cast(typename Vec<W>::u, __builtin_shufflevector(zero, h, zero_then_value(W, K)...));
}

// W values at p as fp32.
template <int W>
HALO_INLINE typename Vec<W>::f load_f32(const bf16* p) {
  typename Vec<W>::h h;
  std::memcpy(&h, p, sizeof h);
  typename Vec<W>::u u;
  if constexpr (W >= 8) {
    u = interleave_zeros<W>(h, std::make_index_sequence<2 * W>{});
  } else {  // SSE2 has no such shuffle of 16-bit lanes: widen, then shift
    u = __builtin_convertvector(h, typename Vec<W>::u) << 16;
  }
  return __builtin_bit_cast(typename Vec<W>::f, u);
}
template <int W>
HALO_INLINE typename Vec<W>::f load_f32(const float* p) {
  return load<W>(p);
}

// The bf16 bit patterns of W floats, lane by lane as store_out rounds one: to nearest, ties to even,
// NaN to the quiet NaN (rounding could carry a NaN's payload into infinity).
template <int W>
HALO_INLINE typename Vec<W>::u bf16_bits(const typename Vec<W>::f& x) {
  using U = typename Vec<W>::u;
  const U bits = __builtin_bit_cast(U, x);
  const U rounded = (bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16;
  return x != x ? U{} + 0x7fc0u : rounded;
}

// W floats stored at p in p's type (bf16: rounded as bf16_bits).
template <int W>
HALO_INLINE void store_vec(bf16* p, const typename Vec<W>::f& x) {
  const typename Vec<W>::h h = __builtin_convertvector(bf16_bits<W>(x), typename Vec<W>::h);
  std::memcpy(p, &h, sizeof h);
}
template <int W>
HALO_INLINE void store_vec(float* p, const typename Vec<W>::f& x) {
  store<W>(p, x);
}

// x rounded to T and read back as fp32: what a T tensor holds of x (fp32: x itself).
template <int W>
HALO_INLINE typename Vec<W>::f round_to(const typename Vec<W>::f& x, const bf16*) {
  return __builtin_bit_cast(typename Vec<W>::f, bf16_bits<W>(x) << 16);
}
template <int W>
HALO_INLINE typename Vec<W>::f round_to(const typename Vec<W>::f& x, const float*) {
  return x;
}
HALO_INLINE float round_to(float x, const bf16*) {
  bf16 b;
  store_out(x, &b);
  return to_f32(b);
}
HALO_INLINE float round_to(float x, const float*) { return x; }

// dst[0:D] = src[0:D] as fp32. Columns past D keep the zeros they were given at task start.
template <int W>
HALO_INLINE void row_to_f32(float* dst, const bf16* src, int64_t D) {
  int64_t d = 0;
  for (; d + W <= D; d += W) store<W>(dst + d, load_f32<W>(src + d));
  for (; d < D; ++d) dst[d] = to_f32(src[d]);
}
template <int W>
HALO_INLINE void row_to_f32(float* dst, const float* src, int64_t D) {
  std::memcpy(dst, src, static_cast<size_t>(D) * sizeof(float));
}

// Folds the W lanes of v with op in a fixed tree (lane j meets lane j + w for w = W/2, ..., 1):
// the same bits on every run, and no round trip through memory.
template <int W, int w, typename Op, size_t... I>
HALO_INLINE typename Vec<W>::f fold_rotated(const typename Vec<W>::f& v, Op op, std::index_sequence<I...>) {
  return op(v, __builtin_shufflevector(v, v, ((I + w) % W)...));
}
template <int W, typename Op, int w = W / 2>
HALO_INLINE float horizontal(const typename Vec<W>::f& v, Op op) {
  const typename Vec<W>::f folded = fold_rotated<W, w>(v, op, std::make_index_sequence<W>{});
  if constexpr (w > 1) {
    return horizontal<W, Op, w / 2>(folded, op);
  } else {
    return folded[0];
  }
}

}  // namespace cpu_vec
}  // namespace halo

// The six entry points of a row kernel `kernel<W, T>(const Args&, int64_t begin, int64_t end)` (AVX-512,
// AVX2 and portable code, fp32 and bf16 each) and `prefix_pick(isa, is_bf16)`, which returns the one to
// run. Used inside a kernel file's anonymous namespace, after `using namespace cpu_vec`.
#define HALO_ROW_KERNEL_ENTRIES(prefix, Args, kernel)                                                     \
  HALO_TARGET("arch=x86-64-v4") void prefix##_avx512_f32(const Args& a, int64_t b, int64_t e) {         \
    kernel<16, float>(a, b, e);                                                                          \
  }                                                                                                      \
  HALO_TARGET("arch=x86-64-v4") void prefix##_avx512_bf16(const Args& a, int64_t b, int64_t e) {        \
    kernel<16, bf16>(a, b, e);                                                                           \
  }                                                                                                      \
  HALO_TARGET("arch=x86-64-v3") void prefix##_avx2_f32(const Args& a, int64_t b, int64_t e) {           \
    kernel<8, float>(a, b, e);                                                                           \
  }                                                                                                      \
  HALO_TARGET("arch=x86-64-v3") void prefix##_avx2_bf16(const Args& a, int64_t b, int64_t e) {          \
    kernel<8, bf16>(a, b, e);                                                                            \
  }                                                                                                      \
  __attribute__((noinline)) void prefix##_generic_f32(const Args& a, int64_t b, int64_t e) {             \
    kernel<4, float>(a, b, e);                                                                           \
  }                                                                                                      \
  __attribute__((noinline)) void prefix##_generic_bf16(const Args& a, int64_t b, int64_t e) {            \
    kernel<4, bf16>(a, b, e);                                                                            \
  }                                                                                                      \
  using prefix##_fn = void (*)(const Args&, int64_t, int64_t);                                           \
  prefix##_fn prefix##_pick(Isa isa, bool is_bf16) {                                                     \
    switch (isa) {                                                                                       \
      case Isa::kAvx512:                                                                                 \
        return is_bf16 ? prefix##_avx512_bf16 : prefix##_avx512_f32;                                     \
      case Isa::kAvx2:                                                                                   \
        return is_bf16 ? prefix##_avx2_bf16 : prefix##_avx2_f32;                                         \
      case Isa::kGeneric:                                                                                \
        break;                                                                                           \
    }                                                                                                    \
    return is_bf16 ? prefix##_generic_bf16 : prefix##_generic_f32;                                       \
  }
