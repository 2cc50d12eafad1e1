// CpuAttention: decode attention (one new query token per sequence) read straight from the paged
// KV pool on CPU, with no gather copy. One task is one (sequence, KV head) — or a 256-token chunk
// of it, merged afterwards, so a small batch of long sequences still splits across threads: it
// streams those K/V blocks once for all query heads of the group, with an online softmax in fp32.
// Tasks run on a WorkerPool (worker_pool.h): torch's OpenMP threads, or parked threads of its own,
// so a call per layer spawns no threads.
// SIMD is chosen at run time (AVX-512, AVX2 or portable code, see the .cpp): the build never
// assumes the build machine's ISA. Plain C++ (no pybind11) apart from bind_cpu_attention.
#pragma once

#include <cstdint>
#include <mutex>
#include <string>
#include <vector>

#include "cpu_isa.h"
#include "worker_pool.h"

namespace halo {

// Sizes of one decode call; see CpuAttention::decode for the layouts they describe.
struct DecodeShape {
  int64_t batch;
  int64_t num_heads;
  int64_t num_kv_heads;
  int64_t head_dim;
  int64_t num_blocks;
  int64_t block_size;
  int64_t max_blocks;
};

struct DecodeArgs {
  const void* q;       // [batch, num_heads, head_dim]
  const void* k_pool;  // [num_kv_heads, num_blocks, block_size, head_dim]
  const void* v_pool;  // same layout as k_pool
  const int64_t* tables;  // [batch, max_blocks] block ids; entries past a sequence's length are ignored
  const int64_t* lens;    // [batch] context length, the current token included
  void* out;              // [batch, num_heads * head_dim]
  DecodeShape shape;
  float scale;   // applied to q.k before the softmax
  bool is_bf16;  // q, pools and out are bf16 (else fp32); accumulation is fp32 either way
};


class CpuAttention {
 public:
  // std::invalid_argument if num_threads < 1, the CPU lacks isa or the build lacks the threads.
  // Naming a narrower ISA than the best, or Threads::kOwn where OpenMP is built in, is for tests
  // and benchmarks of the code other machines run.
  explicit CpuAttention(int num_threads, Isa isa = best_isa(), Threads threads = default_threads());

  int num_threads() const { return pool_.num_threads(); }
  Isa isa() const { return isa_; }
  Threads threads() const { return pool_.threads(); }

  // out[b, h*D:(h+1)*D] = softmax(scale * q[b,h] . K_b^T) V_b over the first lens[b] tokens of
  // sequence b, where query head h reads KV head h / (num_heads / num_kv_heads) and token p of
  // sequence b lives at row p % block_size of block tables[b, p / block_size]. A length of 0 gives
  // zeros. All tensors are contiguous. Checks sizes, lengths and the block ids in use first and
  // throws std::invalid_argument, touching nothing, if any is out of range. Results depend on
  // neither num_threads nor the rest of the batch: each task and each merge of a sequence's
  // chunks runs on one thread in a fixed order, and the chunking depends on the length alone.
  void decode(const DecodeArgs& args);

 private:
  struct alignas(64) Line {  // scratch is cache-line aligned so vector loads never split lines
    float f[16];
  };

  std::mutex call_mutex_;  // scratch_ is shared by every call
  Isa isa_;
  WorkerPool pool_;
  std::vector<std::vector<Line>> scratch_;  // per worker: q, accumulators, K/V tile of one task
  std::vector<float> partials_;             // chunk states of split sequences; kept to avoid page faults
};

}  // namespace halo
