// Page-locked host memory for the ring buffer, from the CUDA runtime when the core was built with
// CUDA (HALO_WITH_CUDA). Plain C++ declarations, so host-compiled files use them without CUDA
// headers; the CPU build gets inline stand-ins that report no device.
#pragma once

#include <cstddef>

namespace halo::cuda {

#ifdef HALO_WITH_CUDA
// True when a driver and at least one device answer. Never throws: a CPU-only machine running a
// CUDA build is normal, and the answer is cached after the first call.
bool device_available();
// cudaHostAlloc'd memory, or nullptr (with the CUDA error cleared) so the caller can fall back.
void* alloc_pinned(std::size_t bytes) noexcept;
void free_pinned(void* p) noexcept;
#else
inline bool device_available() { return false; }
inline void* alloc_pinned(std::size_t) noexcept { return nullptr; }
inline void free_pinned(void*) noexcept {}
#endif

}  // namespace halo::cuda
