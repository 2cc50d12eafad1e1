// The instruction sets the CPU kernels (cpu_attention, cpu_norm) are compiled for, chosen at run
// time: the build never assumes the build machine's ISA. Plain C++, no pybind11.
#pragma once

#include <string>

namespace halo {

// One is picked per kernel object at construction.
enum class Isa { kGeneric, kAvx2, kAvx512 };

Isa best_isa();  // the widest this CPU (and OS) supports
Isa parse_isa(const std::string& name);  // "auto", "avx512", "avx2" or "generic"; std::invalid_argument else
std::string isa_name(Isa isa);
// isa itself where this CPU runs it; std::invalid_argument naming both when it does not.
Isa require_isa(Isa isa);

}  // namespace halo
