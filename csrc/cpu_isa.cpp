// Run-time ISA detection and names for the CPU kernels (see cpu_isa.h).
#include "cpu_isa.h"

#include <stdexcept>

namespace halo {

Isa best_isa() {
#if defined(__x86_64__)
  __builtin_cpu_init();
  // These check the OS too (XSAVE enabled for the wide registers), not only CPUID.
  if (__builtin_cpu_supports("x86-64-v4")) return Isa::kAvx512;
  if (__builtin_cpu_supports("x86-64-v3")) return Isa::kAvx2;
#endif
  return Isa::kGeneric;
}

Isa parse_isa(const std::string& name) {
  if (name == "auto") return best_isa();
  if (name == "avx512") return Isa::kAvx512;
  if (name == "avx2") return Isa::kAvx2;
  if (name == "generic") return Isa::kGeneric;
  throw std::invalid_argument("isa must be 'auto', 'avx512', 'avx2' or 'generic', got '" + name + "'");
}

std::string isa_name(Isa isa) {
  switch (isa) {
    case Isa::kAvx512:
      return "avx512";
    case Isa::kAvx2:
      return "avx2";
    case Isa::kGeneric:
      break;
  }
  return "generic";
}

Isa require_isa(Isa isa) {
  if (static_cast<int>(isa) > static_cast<int>(best_isa())) {
    throw std::invalid_argument("this CPU cannot run isa '" + isa_name(isa) + "' (best: '" + isa_name(best_isa()) +
                                "')");
  }
  return isa;
}

}  // namespace halo
