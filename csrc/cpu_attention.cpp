// CpuAttention: paged decode attention on CPU (see cpu_attention.h) — the per-(sequence, KV head)
// kernel, run-time ISA dispatch and the split of a call into tasks for the WorkerPool. The Python
// binding is in cpu_attention_binding.cpp.
//
// The kernel is written with GCC vector extensions instead of intrinsics: one template, compiled
// per ISA with its own vector width (AVX-512: 16 floats, AVX2: 8, anything else: 4) inside
// functions carrying target attributes, so a plain x86-64 build still runs AVX-512 code where
// the CPU has it. Dot products keep per-lane partial sums and exp is a polynomial: nothing needs
// -ffast-math, and a given ISA always computes the same bits.
#include "cpu_attention.h"

#include "cpu_vec.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <limits>
#include <memory>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

namespace halo {

// ---------------------------------------------------------------------------------------------
// The kernel

namespace {

using namespace cpu_vec;  // the vector helpers shared with the other kernels (cpu_vec.h)

constexpr int kTile = 16;     // tokens scored between two rescales of the running softmax
// Tokens per task: a long sequence is split so that a small batch still keeps every thread busy.
// Fixed, not derived from the thread count or batch, so results never depend on either.
constexpr int64_t kChunk = 256;
constexpr int kMaxLanes = 16;  // widest W; the head dim is padded to a multiple of it in scratch
constexpr float kMinusInf = -std::numeric_limits<float>::infinity();

// Output lane i of a fold takes, from the concatenation x:y, lanes of block i / w (blocks of 2w
// lanes): the low half of the block into lo, the high half into hi.
constexpr int fold_lane(int w, int i) { return (i / w) * 2 * w + i % w; }

template <int W, int w, size_t... I>
HALO_INLINE typename Vec<W>::f fold(const typename Vec<W>::f& x, const typename Vec<W>::f& y,
                                    std::index_sequence<I...>) {
  return __builtin_shufflevector(x, y, fold_lane(w, I)...) + __builtin_shufflevector(x, y, (fold_lane(w, I) + w)...);
}

// Transposing sum: given W vectors, returns the vector whose lane j is the sum of the lanes of
// v[j]. log2(W) rounds of shuffles, each halving the vectors and the partial sums per dot
// product; W dot products cost ~3W shuffle-adds instead of W separate horizontal reductions.
template <int W, int w = W / 2>
HALO_INLINE typename Vec<W>::f lane_sums(typename Vec<W>::f* v) {
  for (int k = 0; k < w; ++k) v[k] = fold<W, w>(v[2 * k], v[2 * k + 1], std::make_index_sequence<W>{});
  if constexpr (w > 1) {
    return lane_sums<W, w / 2>(v);
  } else {
    return v[0];
  }
}

// exp(x) lane by lane for x <= 0 (score - running max). Cephes' expf polynomial (about 1 ulp):
// a libm call per score would cost more than its dot product, and this vectorizes. Below -87.3
// the result is clamped at ~1e-38 instead of 0; callers never add lanes past the tile's end.
template <int W>
HALO_INLINE typename Vec<W>::f exp_le0(const typename Vec<W>::f& arg) {
  using F = typename Vec<W>::f;
  const F lo = F{} - 87.3f;
  const F x = arg < lo ? lo : arg;
  const F t = x * 1.44269504088896341f;
  const F n = (t + 12582912.0f) - 12582912.0f;  // round to nearest integer: the 1.5 * 2^23 trick
  const F r = x - n * 0.693359375f - n * -2.12194440e-4f;
  F p = F{} + 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  auto bits = (__builtin_convertvector(n, typename Vec<W>::i) + 127) << 23;  // 2^n, n >= -126 here
  return p * __builtin_bit_cast(F, bits);
}

// One chunk of one (sequence, KV head): G query heads against the same K/V rows.
template <typename T>
struct Task {
  const T* q;  // G rows of D
  const T* k;  // this KV head's slice of the pool: [num_blocks, block_size, D]
  const T* v;
  const int64_t* table;  // this sequence's block ids
  int64_t start, end;    // the tokens [start, end) of the sequence this task covers
  T* out;                // G rows of D: the result, when the task covers the whole sequence
  float* partial;        // else (non-null) where its unnormalized state goes, see Partial
  int64_t G, D, block_size;
  float scale;
  float* scratch;  // scratch_floats(G, D), 64-byte aligned
};

// The running softmax state of one chunk, [m[G], l[G], acc[G, D]], merged once all chunks are done.
int64_t partial_floats(int64_t G, int64_t D) { return G * (D + 2); }

int64_t padded_dim(int64_t D) { return (D + kMaxLanes - 1) / kMaxLanes * kMaxLanes; }
int64_t scratch_floats(int64_t G, int64_t D) {
  const int64_t Dp = padded_dim(D), Gp = (G + kMaxLanes - 1) / kMaxLanes * kMaxLanes;
  return 2 * G * Dp + 2 * kTile * Dp + Gp * kTile + 2 * Gp;
}


// Invariant: after each tile, for every head g, m[g] is the max score so far, l[g] the sum of
// exp(score - m[g]) and acc[g] the exp-weighted sum of V rows, all relative to the same m[g].
template <int W, typename T>
HALO_INLINE void attend(const Task<T>& t) {
  using F = typename Vec<W>::f;
  const int64_t G = t.G, D = t.D, bs = t.block_size;
  const int64_t Dp = padded_dim(D), Gp = (G + kMaxLanes - 1) / kMaxLanes * kMaxLanes;
  const int64_t Dw = (D + W - 1) / W * W;  // columns the vector loops cover; Dp >= Dw >= D
  float* qf = t.scratch;       // [G, Dp] scaled query, zero past D
  float* acc = qf + G * Dp;    // [G, Dp]
  float* kt = acc + G * Dp;    // [kTile, Dp] this tile's K rows as fp32, zero past D
  float* vt = kt + kTile * Dp;  // [kTile, Dp]
  float* s = vt + kTile * Dp;  // [G, kTile] scores, then probabilities
  float* m = s + Gp * kTile;   // [G]
  float* l = m + Gp;           // [G]
  if (t.end == 0) {  // only a sequence of length 0 has an empty task, and it is not split
    for (int64_t i = 0; i < G * D; ++i) store_out(0.0f, t.out + i);
    return;
  }
  std::fill(qf, kt, 0.0f);
  if (Dp != D) std::fill(kt, s, 0.0f);  // the padding columns of the tiles, never written again
  for (int64_t g = 0; g < G; ++g) {
    for (int64_t d = 0; d < D; ++d) qf[g * Dp + d] = to_f32(t.q[g * D + d]) * t.scale;
    m[g] = kMinusInf;
    l[g] = 0.0f;
  }
  const float* krows[kTile];
  const float* vrows[kTile];
  typename Vec<W>::i lane;  // 0, 1, ..., W - 1: masks the lanes past a partial tile's end
  for (int j = 0; j < W; ++j) lane[j] = j;
  for (int64_t start = t.start; start < t.end; start += kTile) {
    const int n = static_cast<int>(std::min<int64_t>(kTile, t.end - start));
    // A tile's rows are consecutive within a block; the table says where each block lies.
    int64_t block = start / bs, offset = start % bs;
    // The next tile's K and V rows are prefetched while this one computes: in the engine, where the
    // 30 layers' KV (354 MB at batch 64) streams from DRAM, the kernel took 6% less time (26.4 against
    // 28.1 ms a step, three runs each); alone, one layer's KV stays in L3 and it gains nothing.
    if (start + kTile < t.end) {
      const int64_t next = start + kTile;
      const int64_t m = std::min<int64_t>(kTile, t.end - next);
      for (int64_t i = 0; i < m; ++i) {
        const int64_t row = (t.table[(next + i) / bs] * bs + (next + i) % bs) * D;
        const char* kp = reinterpret_cast<const char*>(t.k + row);
        const char* vp = reinterpret_cast<const char*>(t.v + row);
        for (int64_t byte = 0; byte < D * static_cast<int64_t>(sizeof(T)); byte += 64) {
          __builtin_prefetch(kp + byte);
          __builtin_prefetch(vp + byte);
        }
      }
    }
    for (int i = 0; i < n; ++i, ++offset) {
      if (offset == bs) {
        offset = 0;
        ++block;
      }
      const int64_t row = (t.table[block] * bs + offset) * D;
      if constexpr (std::is_same_v<T, float>) {
        if (D % W == 0) {  // whole vectors: read the pool in place
          krows[i] = t.k + row;
          vrows[i] = t.v + row;
          continue;
        }
      }
      row_to_f32<W>(kt + i * Dp, t.k + row, D);
      row_to_f32<W>(vt + i * Dp, t.v + row, D);
      krows[i] = kt + i * Dp;
      vrows[i] = vt + i * Dp;
    }
    for (int i = n; i < kTile; ++i) krows[i] = krows[0];  // any readable row: these lanes are masked
    // Scores, W tokens at a time. Lane l of part[j] sums q[d] k_j[d] over d = l mod W; the q
    // vector is loaded once per W rows and the W partial vectors stay in registers.
    for (int64_t g = 0; g < G; ++g) {
      const float* qg = qf + g * Dp;
      for (int i0 = 0; i0 < n; i0 += W) {
        F part[W] = {};
        for (int64_t d = 0; d < Dw; d += W) {
          const F qv = load<W>(qg + d);
          for (int j = 0; j < W; ++j) part[j] += qv * load<W>(krows[i0 + j] + d);
        }
        store<W>(s + g * kTile + i0, lane_sums<W>(part));
      }
    }
    for (int64_t g = 0; g < G; ++g) {
      float* sg = s + g * kTile;
      F vmax = F{} + m[g];
      for (int i0 = 0; i0 < n; i0 += W) {
        const F sv = (lane + i0 < n) ? load<W>(sg + i0) : F{} + kMinusInf;
        vmax = vmax > sv ? vmax : sv;
      }
      const float mx = horizontal<W>(vmax, [](const F& a, const F& b) { return a > b ? a : b; });
      F vsum = F{};
      for (int i0 = 0; i0 < n; i0 += W) {
        const F p = (lane + i0 < n) ? exp_le0<W>(load<W>(sg + i0) - mx) : F{};
        store<W>(sg + i0, p);
        vsum += p;
      }
      // -inf on the first tile: the clamped exp gives ~1e-38, times acc and l, which are 0.
      const float alpha = exp_le0<W>(F{} + (m[g] - mx))[0];
      l[g] = l[g] * alpha + horizontal<W>(vsum, [](const F& a, const F& b) { return a + b; });
      m[g] = mx;
      // acc[g] = alpha acc[g] + sum_i p_i v_i, in panels of four vectors held in registers
      float* ag = acc + g * Dp;
      int64_t d = 0;
      for (; d + 4 * W <= Dw; d += 4 * W) {
        F a0 = load<W>(ag + d) * alpha, a1 = load<W>(ag + d + W) * alpha;
        F a2 = load<W>(ag + d + 2 * W) * alpha, a3 = load<W>(ag + d + 3 * W) * alpha;
        for (int i = 0; i < n; ++i) {
          const F p = F{} + sg[i];
          const float* vr = vrows[i] + d;
          a0 += p * load<W>(vr);
          a1 += p * load<W>(vr + W);
          a2 += p * load<W>(vr + 2 * W);
          a3 += p * load<W>(vr + 3 * W);
        }
        store<W>(ag + d, a0);
        store<W>(ag + d + W, a1);
        store<W>(ag + d + 2 * W, a2);
        store<W>(ag + d + 3 * W, a3);
      }
      for (; d < Dw; d += W) {
        F a = load<W>(ag + d) * alpha;
        for (int i = 0; i < n; ++i) a += sg[i] * load<W>(vrows[i] + d);
        store<W>(ag + d, a);
      }
    }
  }
  if (t.partial) {
    std::copy(m, m + G, t.partial);
    std::copy(l, l + G, t.partial + G);
    for (int64_t g = 0; g < G; ++g) std::copy(acc + g * Dp, acc + g * Dp + D, t.partial + 2 * G + g * D);
    return;
  }
  for (int64_t g = 0; g < G; ++g) {
    const float inv = 1.0f / l[g];  // l >= 1: the max's own term is exp(0)
    for (int64_t d = 0; d < D; ++d) store_out(acc[g * Dp + d] * inv, t.out + g * D + d);
  }
}

// Combines the partial states of one (sequence, KV head), chunks in order, into its output rows.
// Chunk c sits at parts + c * stride. Rare and small next to the chunks themselves: scalar code.
template <typename T>
void merge(const float* parts, int64_t chunks, int64_t stride, int64_t G, int64_t D, T* out) {
  std::vector<float> weight(static_cast<size_t>(chunks));
  for (int64_t g = 0; g < G; ++g) {
    float mx = kMinusInf;
    for (int64_t c = 0; c < chunks; ++c) mx = std::max(mx, parts[c * stride + g]);
    float l = 0.0f;
    for (int64_t c = 0; c < chunks; ++c) {
      weight[static_cast<size_t>(c)] = std::exp(parts[c * stride + g] - mx);
      l += parts[c * stride + G + g] * weight[static_cast<size_t>(c)];
    }
    const float inv = 1.0f / l;
    for (int64_t d = 0; d < D; ++d) {
      float o = 0.0f;
      for (int64_t c = 0; c < chunks; ++c) o += parts[c * stride + 2 * G + g * D + d] * weight[static_cast<size_t>(c)];
      store_out(o * inv, out + g * D + d);
    }
  }
}

// The per-ISA entry points; CpuAttention picks one at construction. Not target_clones: each ISA
// wants its own vector width W, which a clone cannot change.
HALO_TARGET("arch=x86-64-v4") void attend_avx512(const Task<float>& t) { attend<16>(t); }
HALO_TARGET("arch=x86-64-v4") void attend_avx512(const Task<bf16>& t) { attend<16>(t); }
HALO_TARGET("arch=x86-64-v3") void attend_avx2(const Task<float>& t) { attend<8>(t); }
HALO_TARGET("arch=x86-64-v3") void attend_avx2(const Task<bf16>& t) { attend<8>(t); }
__attribute__((noinline)) void attend_generic(const Task<float>& t) { attend<4>(t); }
__attribute__((noinline)) void attend_generic(const Task<bf16>& t) { attend<4>(t); }

[[noreturn]] void fail(const std::string& message) {
  throw std::invalid_argument("CpuAttention.decode: " + message);
}

void validate(const DecodeArgs& a) {
  const DecodeShape& s = a.shape;
  if (s.batch < 0) fail("batch must be >= 0, got " + std::to_string(s.batch));
  if (s.num_heads < 1 || s.num_kv_heads < 1 || s.head_dim < 1 || s.block_size < 1 || s.num_blocks < 1) {
    fail("num_heads, num_kv_heads, head_dim, num_blocks and block_size must all be >= 1");
  }
  if (s.num_heads % s.num_kv_heads != 0) {
    fail("num_heads (" + std::to_string(s.num_heads) + ") must be a multiple of num_kv_heads (" +
         std::to_string(s.num_kv_heads) + ")");
  }
  if (s.max_blocks < 0) fail("max_blocks must be >= 0, got " + std::to_string(s.max_blocks));
  if (!std::isfinite(a.scale)) fail("scale must be finite");
  if (s.batch == 0) return;
  if (!a.q || !a.k_pool || !a.v_pool || !a.tables || !a.lens || !a.out) fail("null pointer");
  const int64_t capacity = s.max_blocks * s.block_size;
  for (int64_t b = 0; b < s.batch; ++b) {
    const int64_t len = a.lens[b];
    if (len < 0 || len > capacity) {
      fail("context length " + std::to_string(len) + " of sequence " + std::to_string(b) +
           " is outside [0, max_blocks * block_size = " + std::to_string(capacity) + "]");
    }
    const int64_t* row = a.tables + b * s.max_blocks;
    for (int64_t i = 0, used = (len + s.block_size - 1) / s.block_size; i < used; ++i) {
      if (row[i] < 0 || row[i] >= s.num_blocks) {
        fail("block id " + std::to_string(row[i]) + " at table[" + std::to_string(b) + ", " + std::to_string(i) +
             "] is outside [0, num_blocks = " + std::to_string(s.num_blocks) + ")");
      }
    }
  }
}

template <typename T>
Task<T> make_task(const DecodeArgs& a, int64_t b, int64_t chunk, int64_t kh, float* partial, float* scratch) {
  const DecodeShape& s = a.shape;
  const int64_t G = s.num_heads / s.num_kv_heads;
  const int64_t head_offset = (b * s.num_heads + kh * G) * s.head_dim;  // q and out share it
  const int64_t pool_offset = kh * s.num_blocks * s.block_size * s.head_dim;
  return Task<T>{static_cast<const T*>(a.q) + head_offset,
                 static_cast<const T*>(a.k_pool) + pool_offset,
                 static_cast<const T*>(a.v_pool) + pool_offset,
                 a.tables + b * s.max_blocks,
                 chunk * kChunk,
                 std::min(a.lens[b], (chunk + 1) * kChunk),
                 static_cast<T*>(a.out) + head_offset,
                 partial,
                 G,
                 s.head_dim,
                 s.block_size,
                 a.scale,
                 scratch};
}

template <typename T>
void run_task(Isa isa, const Task<T>& t) {
  switch (isa) {
    case Isa::kAvx512:
      attend_avx512(t);
      return;
    case Isa::kAvx2:
      attend_avx2(t);
      return;
    case Isa::kGeneric:
      break;
  }
  attend_generic(t);
}

}  // namespace

CpuAttention::CpuAttention(int num_threads, Isa isa, Threads threads)
    : isa_(require_isa(isa)), pool_(num_threads, threads), scratch_(static_cast<size_t>(num_threads)) {}

void CpuAttention::decode(const DecodeArgs& a) {
  validate(a);
  const DecodeShape& s = a.shape;
  if (s.batch == 0) return;
  std::lock_guard<std::mutex> call(call_mutex_);
  const int64_t G = s.num_heads / s.num_kv_heads, KV = s.num_kv_heads;
  const auto lines = static_cast<size_t>(scratch_floats(G, s.head_dim) / 16);
  for (auto& buf : scratch_) {
    if (buf.size() < lines) buf.resize(lines);
  }
  // Units are (sequence, chunk) pairs in order; first_unit[b] is sequence b's first.
  std::vector<int64_t> first_unit(static_cast<size_t>(s.batch) + 1, 0);
  for (int64_t b = 0; b < s.batch; ++b) {
    const int64_t chunks = std::max<int64_t>(1, (a.lens[b] + kChunk - 1) / kChunk);
    first_unit[static_cast<size_t>(b) + 1] = first_unit[static_cast<size_t>(b)] + chunks;
  }
  const int64_t units = first_unit.back();
  std::vector<int64_t> unit_seq(static_cast<size_t>(units));
  for (int64_t b = 0; b < s.batch; ++b) {
    std::fill(unit_seq.begin() + first_unit[static_cast<size_t>(b)],
              unit_seq.begin() + first_unit[static_cast<size_t>(b) + 1], b);
  }
  // Split sequences park each chunk's state in partials_; the last chunk of a (sequence, KV head)
  // to finish merges them, so there is no second pass over the pool.
  const int64_t pf = partial_floats(G, s.head_dim);
  const bool split = units > s.batch;
  std::unique_ptr<std::atomic<int64_t>[]> remaining;
  if (split) {
    if (partials_.size() < static_cast<size_t>(units * KV * pf)) partials_.resize(static_cast<size_t>(units * KV * pf));
    remaining = std::make_unique<std::atomic<int64_t>[]>(static_cast<size_t>(s.batch * KV));
    for (int64_t b = 0; b < s.batch; ++b) {
      const int64_t chunks = first_unit[static_cast<size_t>(b) + 1] - first_unit[static_cast<size_t>(b)];
      for (int64_t kh = 0; kh < KV; ++kh) remaining[static_cast<size_t>(b * KV + kh)].store(chunks);
    }
  }
  // Task i = (unit i / KV, head i % KV): a sequence's heads and chunks are adjacent, so its block
  // table stays in cache, and each thread's output rows are contiguous runs.
  auto run = [&](auto type_tag, int64_t i, int worker) {
    using T = decltype(type_tag);
    const int64_t unit = i / KV, kh = i % KV, b = unit_seq[static_cast<size_t>(unit)];
    const int64_t first = first_unit[static_cast<size_t>(b)];
    const int64_t chunks = first_unit[static_cast<size_t>(b) + 1] - first;
    float* partial = chunks > 1 ? partials_.data() + i * pf : nullptr;
    float* scratch = scratch_[static_cast<size_t>(worker)].data()->f;
    run_task(isa_, make_task<T>(a, b, unit - first, kh, partial, scratch));
    // acq_rel: the merging thread must see every other chunk's partial state.
    if (partial && remaining[static_cast<size_t>(b * KV + kh)].fetch_sub(1, std::memory_order_acq_rel) == 1) {
      merge(partials_.data() + (first * KV + kh) * pf, chunks, KV * pf, G, s.head_dim,
            static_cast<T*>(a.out) + (b * s.num_heads + kh * G) * s.head_dim);
    }
  };
  pool_.run(units * KV, [&](int64_t i, int worker) {
    if (a.is_bf16) {
      run(bf16{}, i, worker);
    } else {
      run(float{}, i, worker);
    }
  });
}

}  // namespace halo
