// CUDA kernel behind halo::cuda::copy_blocks (see block_copy.h): one grid row per block pair,
// each row's threads striding over the block in the widest word every address allows.
#include "block_copy.h"

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <stdexcept>
#include <string>

namespace halo::cuda {

namespace {

constexpr int kThreads = 256;
constexpr int64_t kWordsPerThread = 4;  // enough independent loads in flight per thread
constexpr int64_t kMaxGridY = 65535;

// Invariant: every block start (pool base + id * block_bytes) is Word-aligned, which the
// launcher guarantees by picking Word from the alignment of both bases and of block_bytes.
template <typename Word>
__global__ void copy_blocks_kernel(const Word* __restrict__ src, Word* __restrict__ dst, int64_t block_words,
                                   const int64_t* __restrict__ src_ids, const int64_t* __restrict__ dst_ids) {
  const int64_t pair = blockIdx.x;
  const Word* from = src + src_ids[pair] * block_words;
  Word* to = dst + dst_ids[pair] * block_words;
  const int64_t step = static_cast<int64_t>(gridDim.y) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.y) * blockDim.x + threadIdx.x; i < block_words; i += step) {
    to[i] = from[i];
  }
}

template <typename Word>
void launch(std::uintptr_t src, std::uintptr_t dst, int64_t block_bytes, std::uintptr_t src_ids,
            std::uintptr_t dst_ids, int64_t num_blocks, cudaStream_t stream) {
  const int64_t words = block_bytes / static_cast<int64_t>(sizeof(Word));
  const int64_t rows = (words + kThreads * kWordsPerThread - 1) / (kThreads * kWordsPerThread);
  const dim3 grid(static_cast<unsigned>(num_blocks), static_cast<unsigned>(std::min(rows, kMaxGridY)));
  copy_blocks_kernel<Word><<<grid, kThreads, 0, stream>>>(
      reinterpret_cast<const Word*>(src), reinterpret_cast<Word*>(dst), words,
      reinterpret_cast<const int64_t*>(src_ids), reinterpret_cast<const int64_t*>(dst_ids));
}

}  // namespace

void copy_blocks(std::uintptr_t src, std::uintptr_t dst, int64_t block_bytes, std::uintptr_t src_ids,
                 std::uintptr_t dst_ids, int64_t num_blocks, std::uintptr_t stream) {
  if (block_bytes < 1) throw std::invalid_argument("cuda_copy_blocks: block_bytes must be >= 1, got " +
                                                   std::to_string(block_bytes));
  if (num_blocks < 0 || num_blocks > std::numeric_limits<int32_t>::max()) {
    throw std::invalid_argument("cuda_copy_blocks: num_blocks must be in [0, 2^31), got " +
                                std::to_string(num_blocks));
  }
  if (num_blocks == 0) return;
  if (src == 0 || dst == 0 || src_ids == 0 || dst_ids == 0) {
    throw std::invalid_argument("cuda_copy_blocks: null pool or id pointer");
  }
  if (src_ids % alignof(int64_t) != 0 || dst_ids % alignof(int64_t) != 0) {
    throw std::invalid_argument("cuda_copy_blocks: id arrays must be 8-byte aligned int64");
  }
  const auto s = reinterpret_cast<cudaStream_t>(stream);
  const std::uintptr_t alignment = src | dst | static_cast<std::uintptr_t>(block_bytes);
  if (alignment % 16 == 0) {
    launch<uint4>(src, dst, block_bytes, src_ids, dst_ids, num_blocks, s);
  } else if (alignment % 8 == 0) {
    launch<uint2>(src, dst, block_bytes, src_ids, dst_ids, num_blocks, s);
  } else if (alignment % 4 == 0) {
    launch<uint32_t>(src, dst, block_bytes, src_ids, dst_ids, num_blocks, s);
  } else {
    launch<unsigned char>(src, dst, block_bytes, src_ids, dst_ids, num_blocks, s);
  }
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) {
    throw std::runtime_error(std::string("cuda_copy_blocks: kernel launch failed: ") + cudaGetErrorString(err));
  }
}

}  // namespace halo::cuda
