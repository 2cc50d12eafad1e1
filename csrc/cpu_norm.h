// CpuNorm: RMSNorm of the rows of a matrix on CPU in one native call, where torch takes eight
// (upcast, square, mean, add, rsqrt, scale, round, weight), each allocating: at decode batch 1 those
// calls were a tenth of the step (61 norms a step for the default model, bench/engine_throughput.py
// --profile). Statistics in fp32 whatever the dtype, the same bits as torch's formula (the squares
// summed in torch's order, each product and rounding as its calls make them; see NormArgs). Rows are split in fixed blocks over a WorkerPool, one row on
// one thread in a fixed order: a row's bits depend on that row alone, never on the batch or the
// thread count. SIMD chosen at run time (cpu_isa.h). Plain C++ (no pybind11) apart from the binding.
#pragma once

#include <cstdint>

#include "cpu_isa.h"
#include "worker_pool.h"

namespace halo {

struct NormArgs {
  const void* x;       // [rows, dim], contiguous, fp32 or (is_bf16) bf16
  const void* weight;  // [dim]: in x's dtype (scale_after_rounding), else an fp32 gain
  void* out;           // [rows, dim], x's dtype
  int64_t rows;
  int64_t dim;
  float eps;
  bool is_bf16;
  // true (Llama and most families): out = weight * round(x * r), the weight applied in x's dtype
  // after rounding; false (Gemma): out = round(x * r * gain), gain = 1 + w in fp32. r = 1 / sqrt(
  // mean(x^2) + eps) in fp32; round is to x's dtype (nothing for fp32).
  bool scale_after_rounding;
};

class CpuNorm {
 public:
  // std::invalid_argument if num_threads < 1, the CPU lacks isa or the build lacks the threads.
  explicit CpuNorm(int num_threads, Isa isa = best_isa(), Threads threads = default_threads());

  int num_threads() const { return pool_.num_threads(); }
  Isa isa() const { return isa_; }

  // out = RMSNorm(x) as NormArgs says. std::invalid_argument, touching nothing, for sizes < 0, a
  // dim of 0, a non-finite or negative eps, or a null pointer with rows > 0.
  void rms_norm(const NormArgs& args);

 private:
  Isa isa_;
  WorkerPool pool_;
};

}  // namespace halo
