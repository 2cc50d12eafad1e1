// CpuRope: one native call per layer for what the decoder's attention input took a dozen torch calls
// for (slice, negate, cat, two multiplies, an add for RoPE; views, transposes and two index copies
// to store K and V): rotate q and k of the fused QKV projection by each token's position
// (rotate_half RoPE, cos/sin tables in the model dtype) and write k and v into the layer's paged
// pool at the tokens' slots. Bit for bit what torch computes: each product and the sum rounded to
// the dtype as torch's separate calls round them, nothing fused into an FMA (this file is built
// with -ffp-contract=off). Rows are split in fixed blocks over a WorkerPool.
#pragma once

#include <cstdint>

#include "cpu_isa.h"
#include "worker_pool.h"

namespace halo {

struct RopeArgs {
  const void* qkv;     // [tokens, (heads + 2 * kv_heads) * head_dim]: q heads, k heads, v heads
  const void* cos;     // [table_len, head_dim], the model dtype
  const void* sin;     // same
  const int64_t* positions;  // [tokens] rows of the tables
  const int64_t* slots;      // [tokens] pool slots (block * block_size + offset)
  void* q_out;         // [tokens, heads, head_dim]
  void* k_out;         // [tokens, kv_heads, head_dim], or null when the caller needs only the pool
  void* k_pool;        // this layer's [kv_heads, pool_slots, head_dim]
  void* v_pool;        // same
  int64_t tokens, heads, kv_heads, head_dim, table_len, pool_slots;
  bool is_bf16;  // every tensor above bf16, else fp32
};

class CpuRope {
 public:
  explicit CpuRope(int num_threads, Isa isa = best_isa(), Threads threads = default_threads());

  int num_threads() const { return pool_.num_threads(); }
  Isa isa() const { return isa_; }

  // out = x * cos + rotate_half(x) * sin for q and k; k and v into the pool. Checks sizes, every
  // position against table_len and every slot against pool_slots first; std::invalid_argument,
  // writing nothing, when one is out of range.
  void rotate_and_store(const RopeArgs& args);

 private:
  Isa isa_;
  WorkerPool pool_;
};

}  // namespace halo
