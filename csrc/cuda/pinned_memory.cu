// cudaHostAlloc-backed allocation for halo::RingBuffer (see pinned_memory.h). Kept in its own
// translation unit so only nvcc ever sees cuda_runtime.h.
#include "pinned_memory.h"

#include <cuda_runtime.h>

namespace halo::cuda {

bool device_available() {
  // Function-local static: thread-safe one-time probe. Static cudart loads the driver lazily, so
  // a machine without one gets an error code here, not a failed import.
  static const bool available = [] {
    int count = 0;
    const bool ok = cudaGetDeviceCount(&count) == cudaSuccess && count > 0;
    cudaGetLastError();  // reset the last-error slot so a later, unrelated check doesn't see it
    return ok;
  }();
  return available;
}

void* alloc_pinned(std::size_t bytes) noexcept {
  void* p = nullptr;
  if (cudaHostAlloc(&p, bytes, cudaHostAllocDefault) != cudaSuccess) {
    cudaGetLastError();
    return nullptr;
  }
  return p;
}

void free_pinned(void* p) noexcept {
  if (p != nullptr) cudaFreeHost(p);
}

}  // namespace halo::cuda
