// Whole-block KV copies between two paged pools on a CUDA device (migration between pools,
// compaction, copy-on-write of a shared block). Plain C++ declaration over raw device addresses,
// so the host-compiled binding needs no CUDA headers and any tensor library can call it.
#pragma once

#include <cstdint>

namespace halo::cuda {

// For i < num_blocks, copies block src_ids[i] of the pool at src onto block dst_ids[i] of the
// pool at dst. A pool is a contiguous array of block_bytes-sized blocks in device memory of the
// current device; src_ids and dst_ids are int64 arrays in device memory. Asynchronous on stream
// (a cudaStream_t as an integer, 0 = the default stream). Ids are not bounds-checked (the pools'
// sizes are unknown here), and within one call no destination block may also be a source.
// std::invalid_argument for bad arguments, std::runtime_error if the launch fails.
void copy_blocks(std::uintptr_t src, std::uintptr_t dst, int64_t block_bytes, std::uintptr_t src_ids,
                 std::uintptr_t dst_ids, int64_t num_blocks, std::uintptr_t stream);

}  // namespace halo::cuda
