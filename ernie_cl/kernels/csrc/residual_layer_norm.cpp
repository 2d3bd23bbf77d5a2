// LayerNorm(dropout(h + h_bias) + residual), forward and backward in one pass over the rows each.
//
// BERT-style blocks end every sublayer with dropout, the residual add and LayerNorm: three ops
// forward (each reading and writing a [tokens x hidden] tensor) and three backward, plus the
// accumulation of the residual's gradient. Here one pass per row applies the counter-based dropout
// (hash_dropout.cpp's recipe over the logical contiguous h, so the mask is the one the unfused
// dropout draws with the same seed), adds the residual and normalises while the row is in cache.
// The sum x = dropout(h) + residual is kept for backward. Backward gives the gradients of h (with
// the mask hashed again), of the residual, and of LayerNorm's weight and bias; those two are summed
// over fixed blocks of rows, then the blocks in order, so nothing depends on the thread count.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <torch/library.h>

#include "counter_hash.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

namespace {

using ernie_cl::dropout_factors;
using Vec = at::vec::Vectorized<float>;
constexpr int64_t kRowsPerBlock = 64;

float row_sum(const float* x, int64_t n) {
  return at::vec::reduce_all<float>([](Vec& a, Vec& b) { return a + b; }, x, n);
}

void check(const at::Tensor& t, const char* what) {
  TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == at::kFloat && t.is_contiguous(),
              "ernie_cl::residual_layer_norm: ", what, " must be a contiguous float32 CPU tensor");
}

// (output, x = dropout(h + h_bias) + residual, mean, rstd); h_bias (the preceding linear layer's bias,
// which then need not be copied into its output) is optional
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> residual_layer_norm_forward(
    const at::Tensor& h, const std::optional<at::Tensor>& h_bias, const at::Tensor& residual, const at::Tensor& weight,
    const at::Tensor& bias, double eps, int64_t seed, int64_t threshold, double dropout_scale) {
  check(h, "h"), check(residual, "the residual"), check(weight, "the weight"), check(bias, "the bias");
  TORCH_CHECK(h.sizes() == residual.sizes() && h.dim() >= 1 && weight.numel() == h.size(-1) && bias.numel() == h.size(-1),
              "ernie_cl::residual_layer_norm: h and the residual must have one shape, the weight and bias its last size");
  if (h_bias) {
    check(*h_bias, "h's bias");
    TORCH_CHECK(h_bias->numel() == h.size(-1), "ernie_cl::residual_layer_norm: h's bias must have h's last size");
  }
  const float* hbp = h_bias ? h_bias->const_data_ptr<float>() : nullptr;
  const int64_t width = h.size(-1), rows = width ? h.numel() / width : 0;
  at::Tensor out = at::empty_like(h), x = at::empty_like(h);
  at::Tensor mean = at::empty({rows}, h.options()), rstd = at::empty({rows}, h.options());
  const float *hp = h.const_data_ptr<float>(), *rp = residual.const_data_ptr<float>();
  const float *gp = weight.const_data_ptr<float>(), *bp = bias.const_data_ptr<float>();
  float *op = out.mutable_data_ptr<float>(), *xp = x.mutable_data_ptr<float>();
  float *mp = mean.mutable_data_ptr<float>(), *sp = rstd.mutable_data_ptr<float>();
  const float scale = static_cast<float>(dropout_scale);
  at::parallel_for(0, rows, 16, [&](int64_t first, int64_t last) {
    std::vector<float> factor(width);
    std::vector<uint16_t> lanes(width + 8);
    std::vector<uint64_t> words(width / 4 + 2);
    for (int64_t i = first; i < last; ++i) {
      const int64_t row = i * width;
      dropout_factors(static_cast<uint64_t>(seed), static_cast<uint64_t>(row), width, static_cast<uint32_t>(threshold),
                      scale, words.data(), lanes.data(), factor.data());
      float* xr = xp + row;
      for (int64_t j = 0; j < width; j += Vec::size()) {
        const int64_t c = std::min<int64_t>(Vec::size(), width - j);
        Vec a = Vec::loadu(hp + row + j, c);
        if (hbp) a = a + Vec::loadu(hbp + j, c);
        (a * Vec::loadu(factor.data() + j, c) + Vec::loadu(rp + row + j, c)).store(xr + j, c);
      }
      const float mu = row_sum(xr, width) / static_cast<float>(width);
      const float var = at::vec::map_reduce_all<float>([mu](Vec v) { return (v - Vec(mu)) * (v - Vec(mu)); },
                                                       [](Vec a, Vec b) { return a + b; }, xr, width) / static_cast<float>(width);
      const float inv = 1.0f / std::sqrt(var + static_cast<float>(eps));
      mp[i] = mu, sp[i] = inv;
      at::vec::map3([mu, inv](Vec v, Vec g, Vec b) { return (v - Vec(mu)) * Vec(inv) * g + b; }, op + row, xr, gp, bp, width);
    }
  });
  return {out, x, mean, rstd};
}

// (d h, d residual, d weight, d bias, d h_bias: the column sums of d h, or an empty tensor unless asked)
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> residual_layer_norm_backward(
    const at::Tensor& grad_in, const at::Tensor& x, const at::Tensor& mean, const at::Tensor& rstd,
    const at::Tensor& weight, bool with_h_bias, int64_t seed, int64_t threshold, double dropout_scale) {
  const at::Tensor grad = grad_in.contiguous();
  check(grad, "the gradient"), check(x, "x"), check(weight, "the weight");
  TORCH_CHECK(grad.sizes() == x.sizes(), "ernie_cl::residual_layer_norm: the gradient must have the output's shape");
  const int64_t width = x.size(-1), rows = width ? x.numel() / width : 0;
  const int64_t blocks = (rows + kRowsPerBlock - 1) / kRowsPerBlock;
  at::Tensor d_h = at::empty_like(x), d_res = at::empty_like(x);
  std::vector<float> partial_w(blocks * width, 0.0f), partial_b(blocks * width, 0.0f);
  std::vector<float> partial_hb(with_h_bias ? blocks * width : 0, 0.0f);
  const float *gp = grad.const_data_ptr<float>(), *xp = x.const_data_ptr<float>();
  const float *mp = mean.const_data_ptr<float>(), *sp = rstd.const_data_ptr<float>(), *wp = weight.const_data_ptr<float>();
  float *dhp = d_h.mutable_data_ptr<float>(), *drp = d_res.mutable_data_ptr<float>();
  const float scale = static_cast<float>(dropout_scale);
  at::parallel_for(0, blocks, 1, [&](int64_t first_block, int64_t last_block) {
    std::vector<float> factor(width), xhat(width), gw(width);
    std::vector<uint16_t> lanes(width + 8);
    std::vector<uint64_t> words(width / 4 + 2);
    for (int64_t block = first_block; block < last_block; ++block) {
      float* sum_w = partial_w.data() + block * width;
      float* sum_b = partial_b.data() + block * width;
      for (int64_t i = block * kRowsPerBlock; i < std::min(rows, (block + 1) * kRowsPerBlock); ++i) {
        const int64_t row = i * width;
        const float mu = mp[i], inv = sp[i];
        const float* gr = gp + row;
        at::vec::map([mu, inv](Vec v) { return (v - Vec(mu)) * Vec(inv); }, xhat.data(), xp + row, width);
        at::vec::map2([](Vec g, Vec w) { return g * w; }, gw.data(), gr, wp, width);
        at::vec::map3([](Vec s, Vec g, Vec xh) { return s + g * xh; }, sum_w, sum_w, gr, xhat.data(), width);
        at::vec::map2([](Vec s, Vec g) { return s + g; }, sum_b, sum_b, gr, width);
        const float mean_g = row_sum(gw.data(), width) / static_cast<float>(width);
        const float mean_gx = at::vec::map2_reduce_all<float>([](Vec a, Vec b) { return a * b; },
                                                              [](Vec a, Vec b) { return a + b; }, gw.data(), xhat.data(), width) /
                              static_cast<float>(width);
        float* dr = drp + row;
        at::vec::map2([inv, mean_g, mean_gx](Vec g, Vec xh) { return Vec(inv) * (g - Vec(mean_g) - xh * Vec(mean_gx)); },
                      dr, gw.data(), xhat.data(), width);
        dropout_factors(static_cast<uint64_t>(seed), static_cast<uint64_t>(row), width, static_cast<uint32_t>(threshold),
                        scale, words.data(), lanes.data(), factor.data());
        at::vec::map2([](Vec d, Vec f) { return d * f; }, dhp + row, dr, factor.data(), width);
        if (with_h_bias) {
          float* sum_hb = partial_hb.data() + block * width;
          at::vec::map2([](Vec s, Vec d) { return s + d; }, sum_hb, sum_hb, dhp + row, width);
        }
      }
    }
  });
  at::Tensor d_weight = at::zeros_like(weight), d_bias = at::zeros_like(weight);
  at::Tensor d_h_bias = with_h_bias ? at::zeros_like(weight) : at::empty({0}, weight.options());
  float *dwp = d_weight.mutable_data_ptr<float>(), *dbp = d_bias.mutable_data_ptr<float>();
  for (int64_t block = 0; block < blocks; ++block) {  // in order: independent of the thread count
    at::vec::map2([](Vec a, Vec b) { return a + b; }, dwp, dwp, partial_w.data() + block * width, width);
    at::vec::map2([](Vec a, Vec b) { return a + b; }, dbp, dbp, partial_b.data() + block * width, width);
    if (with_h_bias) {
      float* dhb = d_h_bias.mutable_data_ptr<float>();
      at::vec::map2([](Vec a, Vec b) { return a + b; }, dhb, dhb, partial_hb.data() + block * width, width);
    }
  }
  return {d_h, d_res, d_weight, d_bias, d_h_bias};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(ernie_cl, m) {
  m.def("residual_layer_norm_forward(Tensor h, Tensor? h_bias, Tensor residual, Tensor weight, Tensor bias, float eps, "
        "int seed, int threshold, float dropout_scale) -> (Tensor, Tensor, Tensor, Tensor)");
  m.def("residual_layer_norm_backward(Tensor grad, Tensor x, Tensor mean, Tensor rstd, Tensor weight, bool with_h_bias, "
        "int seed, int threshold, float dropout_scale) -> (Tensor, Tensor, Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(ernie_cl, CPU, m) {
  m.impl("residual_layer_norm_forward", &residual_layer_norm_forward);
  m.impl("residual_layer_norm_backward", &residual_layer_norm_backward);
}
