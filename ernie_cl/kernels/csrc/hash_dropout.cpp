// Dropout whose mask is a pure function of (seed, element index): ernie-cl's CPU dropout kernel.
//
// Element i of a call is kept when the 16-bit lane (i % 4) of splitmix64(seed + (i / 4) * gamma)
// is >= threshold (= round(p * 65536)); kept elements are multiplied by scale = 1 / (1 - p).
// splitmix64 over a counter (Steele, Lea & Flood, "Fast splittable pseudorandom number generators",
// OOPSLA 2014) passes BigCrush, and a counter-based mask needs no serial generator state: every
// thread hashes its own range, any thread count gives the same mask, and the backward pass hashes
// again instead of storing a mask. The same recipe in torch ops is ernie_cl/model/dropout.py's
// reference (`hash_keep_mask`); the tests hold the two equal bit for bit.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "counter_hash.h"

#include <cstdint>

namespace {

constexpr int64_t kWordsPerBlock = 256;  // 1024 elements: the lanes of a block are hashed, then applied

template <typename scalar_t>
void apply_mask(const scalar_t* in, scalar_t* out, int64_t n, uint64_t seed, uint32_t threshold, double scale) {
  using opmath_t = at::opmath_type<scalar_t>;
  const opmath_t factor = static_cast<opmath_t>(scale);
  const int64_t words = (n + 3) / 4;
  const int64_t blocks = (words + kWordsPerBlock - 1) / kWordsPerBlock;
  at::parallel_for(0, blocks, 16, [&](int64_t first, int64_t last) {
    uint64_t bits[kWordsPerBlock];
    uint16_t lanes[4 * kWordsPerBlock];
    for (int64_t block = first; block < last; ++block) {
      const int64_t word0 = block * kWordsPerBlock;
      ernie_cl::hash_lanes(seed, static_cast<uint64_t>(word0), kWordsPerBlock, bits, lanes);
      const int64_t start = 4 * word0;
      const int64_t count = std::min<int64_t>(4 * kWordsPerBlock, n - start);
      const scalar_t* src = in + start;
      scalar_t* dst = out + start;
      for (int64_t j = 0; j < count; ++j) {
        const opmath_t v = static_cast<opmath_t>(src[j]) * factor;
        dst[j] = static_cast<scalar_t>(lanes[j] >= threshold ? v : opmath_t(0));
      }
    }
  });
}

at::Tensor hash_dropout(const at::Tensor& x, int64_t seed, int64_t threshold, double scale) {
  TORCH_CHECK(x.device().is_cpu(), "ernie_cl::hash_dropout runs on CPU tensors");
  TORCH_CHECK(threshold >= 0 && threshold <= 65536, "ernie_cl::hash_dropout: threshold must be in [0, 65536]");
  const at::Tensor in = x.contiguous();
  at::Tensor out = at::empty_like(in, at::MemoryFormat::Contiguous);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, in.scalar_type(), "hash_dropout", [&] {
    apply_mask<scalar_t>(in.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>(), in.numel(),
                         static_cast<uint64_t>(seed), static_cast<uint32_t>(threshold), scale);
  });
  return out;
}

}  // namespace

TORCH_LIBRARY(ernie_cl, m) {
  m.def("hash_dropout(Tensor x, int seed, int threshold, float scale) -> Tensor");
}

TORCH_LIBRARY_IMPL(ernie_cl, CPU, m) {
  m.impl("hash_dropout", &hash_dropout);
}
