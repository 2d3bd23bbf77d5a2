// The feed-forward widening's bias and exact GELU, with GELU's derivative kept for backward.
//
// torch runs that block as addmm (the bias copied into the [tokens x 4h] output, then the product),
// GELU (erf per element) and, in backward, GELU's backward (erf and exp per element again) and a
// separate column sum for the bias gradient. GELU's erf makes both passes compute-bound. Here the
// forward pass, while an element is in a register, adds the bias, takes erf and exp once and writes
// both gelu(x) and gelu'(x) = Phi(x) + x phi(x); backward is then grad * gelu'(x), a memory-bound
// pass that also sums the bias gradient. The saved tensor (gelu'(x) in place of x) has the same size.
//
// The formulas are torch's (0.5 x (1 + erf(x / sqrt 2)) and its derivative) with a rational erf
// approximation whose exp(-x^2 / 2) is also the derivative's: one exponential per element. Values
// agree with F.gelu and its backward to float rounding (tested). The bias
// gradient sums fixed blocks of rows, then the blocks in order: results do not depend on the
// number of threads (resume stays bitwise exact).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>

namespace {

using Vec = at::vec::Vectorized<float>;
constexpr int64_t kRowsPerBlock = 64;  // the bias gradient's summation blocks (fixed: thread-count independent)

// (gelu(x), gelu'(x)) = (x Phi(x), Phi(x) + x phi(x)), Phi(x) = (1 + erf(x / sqrt 2)) / 2. erf by
// Abramowitz & Stegun 7.1.26 (|error| < 1.5e-7, about float32's resolution near 1):
// erf(z) = 1 - t (a1 + t (a2 + t (a3 + t (a4 + t a5)))) exp(-z^2), t = 1 / (1 + p |z|), odd in z.
// Its exp(-z^2) is exp(-x^2 / 2), phi's exponential: the derivative costs a few products more.
inline std::pair<Vec, Vec> gelu_and_derivative(Vec x) {
  const Vec z = x * Vec(static_cast<float>(M_SQRT1_2));
  const Vec t = Vec(1.0f) / (Vec(1.0f) + Vec(0.3275911f) * z.abs());
  const Vec poly = t * (Vec(0.254829592f) + t * (Vec(-0.284496736f) + t * (Vec(1.421413741f) +
                   t * (Vec(-1.453152027f) + t * Vec(1.061405429f)))));
  const Vec gauss = (Vec(-1.0f) * z * z).exp_u20();  // exp(-x^2 / 2)
  const Vec magnitude = Vec(1.0f) - poly * gauss;
  const Vec erf = Vec::blendv(magnitude, Vec(0.0f) - magnitude, z < Vec(0.0f));
  const Vec cdf = Vec(0.5f) * (Vec(1.0f) + erf);
  return {x * cdf, cdf + x * Vec(static_cast<float>(0.5 * M_2_SQRTPI * M_SQRT1_2)) * gauss};
}

// (gelu(h + bias), gelu'(h + bias)) for a [rows x width] h and a [width] bias (or none)
std::tuple<at::Tensor, at::Tensor> bias_gelu_forward(const at::Tensor& h_in, const std::optional<at::Tensor>& bias_in) {
  TORCH_CHECK(h_in.device().is_cpu() && h_in.scalar_type() == at::kFloat && h_in.dim() >= 1,
              "ernie_cl::bias_gelu: h must be a float32 CPU tensor");
  const at::Tensor h = h_in.contiguous();
  const int64_t width = h.size(-1), rows = width ? h.numel() / width : 0;
  at::Tensor bias;
  if (bias_in) {
    bias = bias_in->contiguous();
    TORCH_CHECK(bias.scalar_type() == at::kFloat && bias.dim() == 1 && bias.size(0) == width,
                "ernie_cl::bias_gelu: the bias must be float32 with one value per column of h");
  }
  at::Tensor out = at::empty_like(h), deriv = at::empty_like(h);
  const float* x = h.const_data_ptr<float>();
  const float* b = bias.defined() ? bias.const_data_ptr<float>() : nullptr;
  float* y = out.mutable_data_ptr<float>();
  float* d = deriv.mutable_data_ptr<float>();
  at::parallel_for(0, rows, 16, [&](int64_t first, int64_t last) {
    for (int64_t i = first; i < last; ++i) {
      const float* xr = x + i * width;
      float* yr = y + i * width;
      float* dr = d + i * width;
      for (int64_t j = 0; j < width; j += Vec::size()) {
        const int64_t c = std::min<int64_t>(Vec::size(), width - j);
        Vec v = Vec::loadu(xr + j, c);
        if (b) v = v + Vec::loadu(b + j, c);
        const auto [value, slope] = gelu_and_derivative(v);
        value.store(yr + j, c);
        slope.store(dr + j, c);
      }
    }
  });
  return {out, deriv};
}

// (grad * deriv, the bias gradient: its column sums, or an empty tensor when with_bias is false)
std::tuple<at::Tensor, at::Tensor> bias_gelu_backward(const at::Tensor& grad_in, const at::Tensor& deriv_in, bool with_bias) {
  TORCH_CHECK(grad_in.scalar_type() == at::kFloat && deriv_in.scalar_type() == at::kFloat && grad_in.sizes() == deriv_in.sizes(),
              "ernie_cl::bias_gelu_backward: grad and deriv must be float32 tensors of one shape");
  const at::Tensor grad = grad_in.contiguous(), deriv = deriv_in.contiguous();
  const int64_t width = grad.size(-1), rows = width ? grad.numel() / width : 0;
  const int64_t blocks = (rows + kRowsPerBlock - 1) / kRowsPerBlock;
  at::Tensor grad_h = at::empty_like(grad);
  at::Tensor partial = at::zeros({with_bias ? blocks : 0, width}, grad.options());
  const float* g = grad.const_data_ptr<float>();
  const float* d = deriv.const_data_ptr<float>();
  float* gh = grad_h.mutable_data_ptr<float>();
  float* sums = with_bias ? partial.mutable_data_ptr<float>() : nullptr;
  at::parallel_for(0, blocks, 1, [&](int64_t first, int64_t last) {
    for (int64_t block = first; block < last; ++block) {
      const int64_t end = std::min(rows, (block + 1) * kRowsPerBlock);
      for (int64_t i = block * kRowsPerBlock; i < end; ++i) {
        const int64_t at = i * width;
        at::vec::map2([](Vec a, Vec b) { return a * b; }, gh + at, g + at, d + at, width);
        if (sums) {  // the row just written, still in cache
          at::vec::map2([](Vec s, Vec a) { return s + a; }, sums + block * width, sums + block * width, gh + at, width);
        }
      }
    }
  });
  at::Tensor grad_bias;
  if (with_bias) {  // the blocks in order
    grad_bias = at::zeros({width}, grad.options());
    float* gb = grad_bias.mutable_data_ptr<float>();
    for (int64_t block = 0; block < blocks; ++block) {
      at::vec::map2([](Vec a, Vec b) { return a + b; }, gb, gb, sums + block * width, width);
    }
  } else {
    grad_bias = at::empty({0}, grad.options());
  }
  return {grad_h, grad_bias};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(ernie_cl, m) {
  m.def("bias_gelu_forward(Tensor h, Tensor? bias) -> (Tensor, Tensor)");
  m.def("bias_gelu_backward(Tensor grad, Tensor deriv, bool with_bias) -> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(ernie_cl, CPU, m) {
  m.impl("bias_gelu_forward", &bias_gelu_forward);
  m.impl("bias_gelu_backward", &bias_gelu_backward);
}
