// The counter-based dropout mask shared by ernie-cl's kernels (the recipe of hash_dropout.cpp):
// element i of a call is kept when the 16-bit lane (i % 4) of splitmix64(seed + (i / 4) * gamma) is
// >= threshold (= round(p * 65536)). splitmix64 over a counter (Steele, Lea & Flood, OOPSLA 2014)
// passes BigCrush; no generator state, so any thread hashes any range and backward hashes again.
#pragma once

#include <cstdint>
#include <cstring>

namespace ernie_cl {

constexpr uint64_t kGamma = 0x9e3779b97f4a7c15ULL;  // splitmix64's increment

inline uint64_t splitmix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

// lanes[4w + k] = lane k of word (word0 + w), for nwords words. Lane k of a word is bits 16k .. 16k+15,
// which on a little-endian machine is the word's k-th 16-bit half in memory
// (ernie_cl/kernels/compiled.py builds the kernels only on little-endian machines), so one copy lays
// the lanes out in element order. ``words`` is scratch of nwords values.
inline void hash_lanes(uint64_t seed, uint64_t word0, int64_t nwords, uint64_t* __restrict words,
                       uint16_t* __restrict lanes) {
  for (int64_t w = 0; w < nwords; ++w) words[w] = splitmix64(seed + (word0 + w) * kGamma);  // vectorises
  std::memcpy(lanes, words, nwords * sizeof(uint64_t));
}

// factor[j] = scale where element (first + j) of the call's logical tensor survives, else 0.
// Floats, not flags: a char store may alias anything, which stops vectorisation. ``words`` holds
// count / 4 + 2 values, ``lanes`` 4 * that many.
inline void dropout_factors(uint64_t seed, uint64_t first, int64_t count, uint32_t threshold, float scale,
                            uint64_t* __restrict words, uint16_t* __restrict lanes, float* __restrict factor) {
  if (threshold == 0) {  // p = 0: every element kept, nothing to hash
    for (int64_t j = 0; j < count; ++j) factor[j] = scale;
    return;
  }
  const uint64_t word0 = first >> 2;
  hash_lanes(seed, word0, static_cast<int64_t>(((first + count + 3) >> 2) - word0), words, lanes);
  const uint16_t* lane = lanes + (first & 3);
  for (int64_t j = 0; j < count; ++j) factor[j] = lane[j] >= threshold ? scale : 0.0f;
}

}  // namespace ernie_cl
