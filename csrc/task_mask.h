// Sets of LLM-task or tool indices for the plan search (plan_cost.h, epoch_dp.cpp): one bit per index.
// `FixedMask<W>` holds W words inline (one word is the common case: at most 64 LLM tasks and 64
// tools); `MaskN` holds as many words as the problem needs, on the heap. They have the same members,
// so the search is one template over them (epoch_dp.cpp picks the smallest that fits). A mask is
// sized by its index space (LLM tasks or tools) and only combined with masks of the same space. All
// order like the unsigned integers they spell, as the Python reference orders its int masks (the
// search sorts worker slots by them, and the two must sort alike).
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <vector>

namespace halo {

// `Words` machine words inline: no allocation, loops the compiler unrolls.
template <int Words>
class FixedMask {
 public:
  static constexpr int kBits = 64 * Words;

  explicit FixedMask(int /*bits*/ = 0) {}
  static FixedMask full(int bits) {
    FixedMask m;
    for (int k = 0; k < Words; ++k) {
      const int left = bits - 64 * k;
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
  bool subset_of(const FixedMask& o) const {
    for (int k = 0; k < Words; ++k) {
      if (w_[k] & ~o.w_[k]) return false;
    }
    return true;
  }
  uint64_t hash() const {
    uint64_t h = w_[0];
    for (int k = 1; k < Words; ++k) h = (h ^ w_[k]) * 0x9E3779B97F4A7C15ULL + (h >> 31);
    return h;
  }

  FixedMask& operator|=(const FixedMask& o) {
    for (int k = 0; k < Words; ++k) w_[k] |= o.w_[k];
    return *this;
  }
  FixedMask& operator&=(const FixedMask& o) {
    for (int k = 0; k < Words; ++k) w_[k] &= o.w_[k];
    return *this;
  }
  FixedMask& operator-=(const FixedMask& o) {  // set difference
    for (int k = 0; k < Words; ++k) w_[k] &= ~o.w_[k];
    return *this;
  }
  friend FixedMask operator|(FixedMask a, const FixedMask& b) { return a |= b; }
  friend FixedMask operator&(FixedMask a, const FixedMask& b) { return a &= b; }
  friend FixedMask operator-(FixedMask a, const FixedMask& b) { return a -= b; }  // set difference
  bool operator==(const FixedMask& o) const { return w_ == o.w_; }
  bool operator<(const FixedMask& o) const {  // as integers: the highest word decides first
    for (int k = Words - 1; k >= 0; --k) {
      if (w_[k] != o.w_[k]) return w_[k] < o.w_[k];
    }
    return false;
  }

 private:
  std::array<uint64_t, Words> w_{};
};

// Any number of words, on the heap (past the fixed sizes the search is instantiated for).
class MaskN {
 public:
  explicit MaskN(int bits = 0) : w_((bits + 63) / 64, 0) {}
  static MaskN full(int bits) {
    MaskN m(bits);
    for (size_t k = 0; k < m.w_.size(); ++k) {
      const int left = bits - static_cast<int>(64 * k);
      m.w_[k] = left >= 64 ? ~uint64_t{0} : (uint64_t{1} << left) - 1;
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
  bool subset_of(const MaskN& o) const {
    for (size_t k = 0; k < w_.size(); ++k) {
      if (w_[k] & ~o.w_[k]) return false;
    }
    return true;
  }
  uint64_t hash() const {
    uint64_t h = 0;
    for (uint64_t w : w_) h = (h ^ w) * 0x9E3779B97F4A7C15ULL + (h >> 31);
    return h;
  }

  MaskN& operator|=(const MaskN& o) {
    for (size_t k = 0; k < w_.size(); ++k) w_[k] |= o.w_[k];
    return *this;
  }
  MaskN& operator&=(const MaskN& o) {
    for (size_t k = 0; k < w_.size(); ++k) w_[k] &= o.w_[k];
    return *this;
  }
  MaskN& operator-=(const MaskN& o) {  // set difference
    for (size_t k = 0; k < w_.size(); ++k) w_[k] &= ~o.w_[k];
    return *this;
  }
  friend MaskN operator|(MaskN a, const MaskN& b) { return a |= b; }
  friend MaskN operator&(MaskN a, const MaskN& b) { return a &= b; }
  friend MaskN operator-(MaskN a, const MaskN& b) { return a -= b; }  // set difference
  bool operator==(const MaskN& o) const { return w_ == o.w_; }
  bool operator<(const MaskN& o) const {  // as integers: the highest word decides first
    for (size_t k = w_.size(); k-- > 0;) {
      if (w_[k] != o.w_[k]) return w_[k] < o.w_[k];
    }
    return false;
  }

 private:
  std::vector<uint64_t> w_;
};

}  // namespace halo
