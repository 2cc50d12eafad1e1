// CpuRope (see cpu_rope.h): the per-token kernel, its per-ISA entry points and the split into row
// blocks. Built with -ffp-contract=off (CMakeLists.txt): x * cos + r * sin must stay two products
// and a sum, as torch computes it. The Python binding is in cpu_rope_binding.cpp.
#include "cpu_rope.h"

#include <algorithm>
#include <cstring>
#include <stdexcept>
#include <string>

#include "cpu_vec.h"

namespace halo {

namespace {

using namespace cpu_vec;

constexpr int64_t kRowsPerTask = 16;
constexpr int64_t kInline = 64;  // tokens: a decode step's rows run on the caller

// dst[0:D] = x * cos + rotate_half(x) * sin, rotate_half(x) = cat(-x[half:], x[:half]); for bf16
// each product and the sum rounded to bf16, as torch's calls do.
template <int W, typename T>
HALO_INLINE void rotate(const T* x, const T* cos, const T* sin, T* dst, int64_t D) {
  using F = typename Vec<W>::f;
  const int64_t half = D / 2;
  const T* tag = nullptr;
  int64_t d = 0;
  if (half % W == 0) {
    for (; d < half; d += W) {
      const F x1 = load_f32<W>(x + d), x2 = load_f32<W>(x + half + d);
      const F lo = round_to<W>(x1 * load_f32<W>(cos + d), tag) + round_to<W>((-x2) * load_f32<W>(sin + d), tag);
      const F hi = round_to<W>(x2 * load_f32<W>(cos + half + d), tag) +
                   round_to<W>(x1 * load_f32<W>(sin + half + d), tag);
      store_vec<W>(dst + d, lo);
      store_vec<W>(dst + half + d, hi);
    }
    return;
  }
  for (; d < half; ++d) {
    const float x1 = to_f32(x[d]), x2 = to_f32(x[half + d]);
    store_out(round_to(x1 * to_f32(cos[d]), tag) + round_to(-x2 * to_f32(sin[d]), tag), dst + d);
    store_out(round_to(x2 * to_f32(cos[half + d]), tag) + round_to(x1 * to_f32(sin[half + d]), tag), dst + half + d);
  }
}

template <int W, typename T>
HALO_INLINE void rope_rows(const RopeArgs& a, int64_t t0, int64_t t1) {
  const int64_t H = a.heads, KV = a.kv_heads, D = a.head_dim, S = a.pool_slots;
  const T* qkv = static_cast<const T*>(a.qkv);
  const T* cos = static_cast<const T*>(a.cos);
  const T* sin = static_cast<const T*>(a.sin);
  T* q_out = static_cast<T*>(a.q_out);
  T* k_out = static_cast<T*>(a.k_out);
  T* k_pool = static_cast<T*>(a.k_pool);
  T* v_pool = static_cast<T*>(a.v_pool);
  for (int64_t t = t0; t < t1; ++t) {
    const T* row = qkv + t * (H + 2 * KV) * D;
    const T* c = cos + a.positions[t] * D;
    const T* s = sin + a.positions[t] * D;
    const int64_t slot = a.slots[t];
    for (int64_t h = 0; h < H; ++h) rotate<W>(row + h * D, c, s, q_out + (t * H + h) * D, D);
    for (int64_t h = 0; h < KV; ++h) {
      T* pooled = k_pool + (h * S + slot) * D;
      rotate<W>(row + (H + h) * D, c, s, pooled, D);
      if (k_out) std::memcpy(k_out + (t * KV + h) * D, pooled, static_cast<size_t>(D) * sizeof(T));
      std::memcpy(v_pool + (h * S + slot) * D, row + (H + KV + h) * D, static_cast<size_t>(D) * sizeof(T));
    }
  }
}

HALO_ROW_KERNEL_ENTRIES(rope, RopeArgs, rope_rows)

[[noreturn]] void fail(const std::string& message) {
  throw std::invalid_argument("CpuRope.rotate_and_store: " + message);
}

void validate(const RopeArgs& a) {
  if (a.tokens < 0) fail("tokens must be >= 0, got " + std::to_string(a.tokens));
  if (a.heads < 1 || a.kv_heads < 1 || a.head_dim < 2 || a.head_dim % 2 || a.table_len < 1 || a.pool_slots < 1) {
    fail("heads, kv_heads, table_len and pool_slots must be >= 1 and head_dim even");
  }
  if (a.tokens == 0) return;
  if (!a.qkv || !a.cos || !a.sin || !a.positions || !a.slots || !a.q_out || !a.k_pool || !a.v_pool) {
    fail("null pointer");
  }
  for (int64_t t = 0; t < a.tokens; ++t) {
    if (a.positions[t] < 0 || a.positions[t] >= a.table_len) {
      fail("position " + std::to_string(a.positions[t]) + " of token " + std::to_string(t) +
           " is outside the rope table [0, " + std::to_string(a.table_len) + ")");
    }
    if (a.slots[t] < 0 || a.slots[t] >= a.pool_slots) {
      fail("slot " + std::to_string(a.slots[t]) + " of token " + std::to_string(t) + " is outside the pool [0, " +
           std::to_string(a.pool_slots) + ")");
    }
  }
}

}  // namespace

CpuRope::CpuRope(int num_threads, Isa isa, Threads threads) : isa_(require_isa(isa)), pool_(num_threads, threads) {}

void CpuRope::rotate_and_store(const RopeArgs& a) {
  validate(a);
  if (a.tokens == 0) return;
  const rope_fn rows_fn = rope_pick(isa_, a.is_bf16);
  if (a.tokens <= kInline) {
    rows_fn(a, 0, a.tokens);
    return;
  }
  // Two tokens never share a slot within a step, so row blocks write disjoint pool rows.
  const int64_t tasks = (a.tokens + kRowsPerTask - 1) / kRowsPerTask;
  pool_.run(tasks, [&](int64_t i, int) { rows_fn(a, i * kRowsPerTask, std::min(a.tokens, (i + 1) * kRowsPerTask)); });
}

}  // namespace halo
