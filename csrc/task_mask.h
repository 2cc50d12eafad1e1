// Sets of LLM-task or tool indices for the plan search (plan_cost.h, epoch_dp.cpp): one bit per index.
// `FixedMask<W>` holds W words inline (one word is the common case: at most 64 LLM tasks and 64
// tools); `MaskN` holds as many words as the problem needs, on the heap. Both are one `BitMask`,
// so the search is one template over them (epoch_dp.cpp picks the smallest that fits). A mask is
// sized by its index space (LLM tasks or tools) and only combined with masks of the same space. All
// order like the unsigned integers they spell, as the Python reference orders its int masks (the
// search sorts worker slots by them, and the two must sort alike).
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <type_traits>
#include <vector>

namespace halo {

// One bit per index over the words of `Words`: std::array<uint64_t, W> (inline, loops the compiler
// unrolls) or std::vector<uint64_t> (as many words as the problem needs).
template <class Words>
class BitMask {
 public:
  explicit BitMask(int bits = 0) {
    if constexpr (std::is_same_v<Words, std::vector<uint64_t>>) w_.assign((bits + 63) / 64, 0);
  }
  static BitMask full(int bits) {
    BitMask m(bits);
    for (size_t k = 0; k < m.w_.size(); ++k) {
      const int left = bits - static_cast<int>(64 * k);
      m.w_[k] = left >= 64 ? ~uint64_t{0} : left <= 0 ? 0 : (uint64_t{1} << left) - 1;
    }
    return m;
  }

  bool test(int i) const { return w_[i >> 6] >> (i & 63) & 1; }
  void set(int i) { w_[i >> 6] |= uint64_t{1} << (i & 63); }
  bool any() const {
    for (uint64_t w : w_) {
      if (w) return true;
    }
    return false;
  }
  bool subset_of(const BitMask& o) const {
    for (size_t k = 0; k < w_.size(); ++k) {
      if (w_[k] & ~o.w_[k]) return false;
    }
    return true;
  }
  uint64_t hash() const {  // one word: the word itself
    uint64_t h = w_.empty() ? 0 : w_[0];
    for (size_t k = 1; k < w_.size(); ++k) h = (h ^ w_[k]) * 0x9E3779B97F4A7C15ULL + (h >> 31);
    return h;
  }

  BitMask& operator|=(const BitMask& o) {
    for (size_t k = 0; k < w_.size(); ++k) w_[k] |= o.w_[k];
    return *this;
  }
  BitMask& operator&=(const BitMask& o) {
    for (size_t k = 0; k < w_.size(); ++k) w_[k] &= o.w_[k];
    return *this;
  }
  BitMask& operator-=(const BitMask& o) {  // set difference
    for (size_t k = 0; k < w_.size(); ++k) w_[k] &= ~o.w_[k];
    return *this;
  }
  friend BitMask operator|(BitMask a, const BitMask& b) { return a |= b; }
  friend BitMask operator&(BitMask a, const BitMask& b) { return a &= b; }
  friend BitMask operator-(BitMask a, const BitMask& b) { return a -= b; }  // set difference
  bool operator==(const BitMask& o) const { return w_ == o.w_; }
  bool operator<(const BitMask& o) const {  // as integers: the highest word decides first
    for (size_t k = w_.size(); k-- > 0;) {
      if (w_[k] != o.w_[k]) return w_[k] < o.w_[k];
    }
    return false;
  }

 private:
  Words w_{};
};

template <int W>
using FixedMask = BitMask<std::array<uint64_t, W>>;
using MaskN = BitMask<std::vector<uint64_t>>;

}  // namespace halo
