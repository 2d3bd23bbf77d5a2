// Attention with dropout on the probabilities, one (batch, head) at a time: ernie-cl's CPU kernel.
//
// With dropout on the attention probabilities (BERT's 0.1) torch's CPU SDPA leaves its fused kernel
// for the math path: the transposed query, key and value views are copied, the [B, H, Sq, Sk]
// scores are written, masked, soft-maxed and dropped out in separate passes over memory, the output
// is transposed and copied again, and backward does the same in reverse. Here one thread takes one
// (batch, head) at a time: the scores of that head ([Sq x Sk], in cache), the mask add, the softmax
// and the counter-based dropout (the recipe of hash_dropout.cpp, indexed over the logical
// contiguous [B, H, Sq, Sk] tensor, so the masks equal the math path's for the same seed) run on it
// while it is in cache, and the products read the strided views and write the output in the
// [B, Sq, H, d] layout the model wants. The softmax output is kept for backward (the math path keeps
// it too); the dropout mask is hashed again there.
//
// The products are MKL's sgemm (exported by libtorch_cpu), single-threaded inside the parallel loop;
// the symbol is weak, so where torch has no MKL the op reports itself unavailable and the Python side
// keeps the math path. Each head is computed by one thread, so results do not depend on the number
// of threads.
//
// packed_attention_*: self-attention on one packed projection ([B, S, 3 * H * d], one product of the
// three weights, taken without their biases). Each head's blocks are read with the bias added into a
// scratch block, and backward writes the gradient packed and sums each head's bias gradient while its
// blocks are in cache (per batch element, then over the batch in order: thread-count independent).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <torch/library.h>

#include "counter_hash.h"

#include <algorithm>
#include <array>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

extern "C" void sgemm_(const char* transa, const char* transb, const int* m, const int* n, const int* k,
                       const float* alpha, const float* a, const int* lda, const float* b, const int* ldb,
                       const float* beta, float* c, const int* ldc) __attribute__((weak));

namespace {

using ernie_cl::dropout_factors;
using Vec = at::vec::Vectorized<float>;

// Row-major C[m x n] = alpha * op(A) op(B) + beta * C, through column-major sgemm (C^T = op(B)^T op(A)^T).
void gemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha, const float* a, int64_t lda,
          const float* b, int64_t ldb, float beta, float* c, int64_t ldc) {
  const char ta = trans_a ? 'T' : 'N', tb = trans_b ? 'T' : 'N';
  const int mi = static_cast<int>(n), ni = static_cast<int>(m), ki = static_cast<int>(k);
  const int la = static_cast<int>(ldb), lb = static_cast<int>(lda), lc = static_cast<int>(ldc);
  sgemm_(&tb, &ta, &mi, &ni, &ki, &alpha, b, &la, a, &lb, &beta, c, &lc);
}

// row <- softmax(row + mask_row) (the probabilities kept for backward); dropped <- row * factor
void softmax_dropout_row(float* __restrict row, const float* __restrict mask_row, const float* __restrict factor,
                         float* __restrict dropped, int64_t n) {
  const int64_t step = Vec::size();
  Vec top(-std::numeric_limits<float>::infinity());
  for (int64_t j = 0; j < n; j += step) {
    const int64_t c = std::min(step, n - j);
    Vec x = Vec::loadu(row + j, c);
    if (mask_row) x = x + Vec::loadu(mask_row + j, c);
    x.store(row + j, c);
    top = at::vec::maximum(top, c == step ? x : Vec::set(Vec(-std::numeric_limits<float>::infinity()), x, c));
  }
  const Vec peak(at::vec::vec_reduce_all<float>([](Vec& a, Vec& b) { return at::vec::maximum(a, b); }, top));
  Vec total(0.0f);
  for (int64_t j = 0; j < n; j += step) {
    const int64_t c = std::min(step, n - j);
    const Vec e = (Vec::loadu(row + j, c) - peak).exp_u20();
    e.store(row + j, c);
    total = total + (c == step ? e : Vec::set(Vec(0.0f), e, c));
  }
  const Vec inv(1.0f / at::vec::vec_reduce_all<float>([](Vec& a, Vec& b) { return a + b; }, total));
  for (int64_t j = 0; j < n; j += step) {
    const int64_t c = std::min(step, n - j);
    const Vec prob = Vec::loadu(row + j, c) * inv;
    prob.store(row + j, c);
    (prob * Vec::loadu(factor + j, c)).store(dropped + j, c);
  }
}

// grad <- P * (grad * factor - sum_j P_j grad_j factor_j): softmax's backward through the dropout
void softmax_dropout_backward_row(const float* __restrict prob, const float* __restrict factor, float* __restrict grad,
                                  int64_t n) {
  const int64_t step = Vec::size();
  Vec dot(0.0f);
  for (int64_t j = 0; j < n; j += step) {
    const int64_t c = std::min(step, n - j);
    const Vec g = Vec::loadu(grad + j, c) * Vec::loadu(factor + j, c);
    g.store(grad + j, c);
    dot = dot + Vec::loadu(prob + j, c) * g;  // loadu(p, c) zero-fills past c, so the tail adds 0
  }
  const Vec sum(at::vec::vec_reduce_all<float>([](Vec& a, Vec& b) { return a + b; }, dot));
  for (int64_t j = 0; j < n; j += step) {
    const int64_t c = std::min(step, n - j);
    (Vec::loadu(prob + j, c) * (Vec::loadu(grad + j, c) - sum)).store(grad + j, c);
  }
}

struct Dims {
  int64_t batch, heads, sq, sk, dim;
};

// Where one of query, key, value lies: element (b, h, s, j) of its [B, H, S, d] view is at
// base[b * batch + h * head + s * row + j]; ``bias`` (d values per head, or null) is added to it.
struct Operand {
  const float* base;
  int64_t batch, head, row;
  const float* bias;
};

Operand operand(const at::Tensor& t, const float* bias = nullptr) {
  return {t.const_data_ptr<float>(), t.stride(0), t.stride(1), t.stride(2), bias};
}

// A head's [rows x dim] block of ``x``, ready for a product: a pointer and its row stride. With a bias
// the block plus the bias is written into ``scratch`` (in cache: one head is 32 KB at the benchmark's
// sizes); without, the product reads the block where it lies.
std::pair<const float*, int64_t> head_block(const Operand& x, int64_t b, int64_t h, int64_t rows, int64_t dim,
                                            float* scratch) {
  const float* src = x.base + b * x.batch + h * x.head;
  if (!x.bias) return {src, x.row};
  const float* bias = x.bias + h * dim;
  for (int64_t i = 0; i < rows; ++i) {
    at::vec::map2([](Vec a, Vec c) { return a + c; }, scratch + i * dim, src + i * x.row, bias, dim);
  }
  return {scratch, dim};
}

// sums[j] = sum over rows of block[i * row + j]: a bias gradient's share of one head
void column_sums(const float* block, int64_t row, int64_t rows, int64_t dim, float* __restrict sums) {
  std::fill(sums, sums + dim, 0.0f);
  for (int64_t i = 0; i < rows; ++i) {
    at::vec::map2([](Vec a, Vec c) { return a + c; }, sums, sums, block + i * row, dim);
  }
}

Dims check(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v) {
  for (const at::Tensor* t : {&q, &k, &v}) {
    TORCH_CHECK(t->device().is_cpu() && t->scalar_type() == at::kFloat && t->dim() == 4 && t->stride(3) == 1,
                "ernie_cl::attention: query, key and value must be float32 CPU [B, H, S, d] tensors with a contiguous last dimension");
  }
  const Dims d{q.size(0), q.size(1), q.size(2), k.size(2), q.size(3)};
  TORCH_CHECK(k.size(0) == d.batch && v.size(0) == d.batch && k.size(1) == d.heads && v.size(1) == d.heads &&
                  k.size(3) == d.dim && v.size(3) == d.dim && v.size(2) == d.sk,
              "ernie_cl::attention: query, key and value shapes do not match");
  TORCH_CHECK(sgemm_ != nullptr, "ernie_cl::attention: this torch build has no MKL sgemm");
  return d;
}

void check_mask(const std::optional<at::Tensor>& mask, const Dims& d) {
  if (mask) {
    TORCH_CHECK(mask->scalar_type() == at::kFloat && mask->dim() == 4 && mask->stride(3) == 1 &&
                    mask->size(0) == d.batch && mask->size(1) == d.heads && mask->size(2) == d.sq && mask->size(3) == d.sk,
                "ernie_cl::attention: the mask must be an additive float32 tensor expanded to [B, H, Sq, Sk]");
  }
}

// (output [B, Sq, H, d], probabilities before dropout [B, H, Sq, Sk])
std::tuple<at::Tensor, at::Tensor> forward_impl(const Dims& d, const Operand& q, const Operand& k, const Operand& v,
                                                const std::optional<at::Tensor>& mask, double scale, int64_t seed,
                                                int64_t threshold, double dropout_scale, const at::TensorOptions& options) {
  check_mask(mask, d);
  at::Tensor out = at::empty({d.batch, d.sq, d.heads, d.dim}, options);
  at::Tensor probs = at::empty({d.batch, d.heads, d.sq, d.sk}, options);
  const float* mp = mask ? mask->const_data_ptr<float>() : nullptr;
  float* op = out.mutable_data_ptr<float>();
  float* pp = probs.mutable_data_ptr<float>();
  const float drop_scale = static_cast<float>(dropout_scale);
  at::parallel_for(0, d.batch * d.heads, 1, [&](int64_t first, int64_t last) {
    std::vector<float> dropped(d.sq * d.sk), factor(d.sk), scratch((d.sq + 2 * d.sk) * d.dim);
    std::vector<uint16_t> lanes(d.sk + 8);
    std::vector<uint64_t> words(d.sk / 4 + 2);
    for (int64_t bh = first; bh < last; ++bh) {
      const int64_t b = bh / d.heads, h = bh % d.heads;
      const auto [qh, ldq] = head_block(q, b, h, d.sq, d.dim, scratch.data());
      const auto [kh, ldk] = head_block(k, b, h, d.sk, d.dim, scratch.data() + d.sq * d.dim);
      const auto [vh, ldv] = head_block(v, b, h, d.sk, d.dim, scratch.data() + (d.sq + d.sk) * d.dim);
      float* ph = pp + bh * d.sq * d.sk;
      gemm(false, true, d.sq, d.sk, d.dim, static_cast<float>(scale), qh, ldq, kh, ldk, 0.0f, ph, d.sk);
      for (int64_t i = 0; i < d.sq; ++i) {
        const float* mrow = mp ? mp + b * mask->stride(0) + h * mask->stride(1) + i * mask->stride(2) : nullptr;
        dropout_factors(static_cast<uint64_t>(seed), static_cast<uint64_t>((bh * d.sq + i) * d.sk), d.sk,
                        static_cast<uint32_t>(threshold), drop_scale, words.data(), lanes.data(), factor.data());
        softmax_dropout_row(ph + i * d.sk, mrow, factor.data(), dropped.data() + i * d.sk, d.sk);
      }
      const int64_t out_row = d.heads * d.dim;
      gemm(false, false, d.sq, d.dim, d.sk, 1.0f, dropped.data(), d.sk, vh, ldv, 0.0f,
           op + b * d.sq * out_row + h * d.dim, out_row);
    }
  });
  return {out, probs};
}

// Where the gradients of query, key and value go: element (b, s, h, j) of part p at
// base[p] + b * S * row + s * row + h * d + j (separate [B, S, H, d] tensors, or one [B, S, 3, H, d]).
struct GradOut {
  float* base[3];
  int64_t row;
};

// the gradients into ``g``; with ``bias_grad`` ([3, H, d]) also the biases' gradients, summed per head
// and batch element into ``partial`` ([B, 3, H, d]) and then over the batch in a fixed order, so that
// no result depends on the number of threads
void backward_impl(const Dims& d, const at::Tensor& grad, const Operand& q, const Operand& k, const Operand& v,
                   const at::Tensor& probs, double scale, int64_t seed, int64_t threshold, double dropout_scale,
                   const GradOut& g, float* bias_grad) {
  TORCH_CHECK(grad.scalar_type() == at::kFloat && grad.dim() == 4 && grad.size(0) == d.batch &&
                  grad.size(1) == d.sq && grad.size(2) == d.heads && grad.size(3) == d.dim && grad.is_contiguous(),
              "ernie_cl::attention: the output gradient must be float32 [B, Sq, H, d]");
  TORCH_CHECK(probs.is_contiguous() && probs.numel() == d.batch * d.heads * d.sq * d.sk,
              "ernie_cl::attention: probabilities must be the forward's contiguous [B, H, Sq, Sk]");
  const float* gp = grad.const_data_ptr<float>();
  const float* pp = probs.const_data_ptr<float>();
  const float drop_scale = static_cast<float>(dropout_scale);
  const int64_t row = d.heads * d.dim;  // row stride of the output gradient
  const int64_t width = d.heads * d.dim;
  std::vector<float> partial(bias_grad ? d.batch * 3 * width : 0);
  at::parallel_for(0, d.batch * d.heads, 1, [&](int64_t first, int64_t last) {
    std::vector<float> dropped(d.sq * d.sk), dprobs(d.sq * d.sk), factors(d.sq * d.sk), scratch((d.sq + 2 * d.sk) * d.dim);
    std::vector<uint16_t> lanes(d.sk + 8);
    std::vector<uint64_t> words(d.sk / 4 + 2);
    for (int64_t bh = first; bh < last; ++bh) {
      const int64_t b = bh / d.heads, h = bh % d.heads;
      const float* ph = pp + bh * d.sq * d.sk;
      const float* gh = gp + b * d.sq * row + h * d.dim;
      for (int64_t i = 0; i < d.sq; ++i) {
        float* factor = factors.data() + i * d.sk;
        dropout_factors(static_cast<uint64_t>(seed), static_cast<uint64_t>((bh * d.sq + i) * d.sk), d.sk,
                        static_cast<uint32_t>(threshold), drop_scale, words.data(), lanes.data(), factor);
        at::vec::map2([](Vec p, Vec f) { return p * f; }, dropped.data() + i * d.sk, ph + i * d.sk, factor, d.sk);
      }
      const auto [qh, ldq] = head_block(q, b, h, d.sq, d.dim, scratch.data());
      const auto [kh, ldk] = head_block(k, b, h, d.sk, d.dim, scratch.data() + d.sq * d.dim);
      const auto [vh, ldv] = head_block(v, b, h, d.sk, d.dim, scratch.data() + (d.sq + d.sk) * d.dim);
      float* dq = g.base[0] + b * d.sq * g.row + h * d.dim;
      float* dk = g.base[1] + b * d.sk * g.row + h * d.dim;
      float* dv = g.base[2] + b * d.sk * g.row + h * d.dim;
      // d value = dropped^T . d out
      gemm(true, false, d.sk, d.dim, d.sq, 1.0f, dropped.data(), d.sk, gh, row, 0.0f, dv, g.row);
      // d dropped = d out . value^T
      gemm(false, true, d.sq, d.sk, d.dim, 1.0f, gh, row, vh, ldv, 0.0f, dprobs.data(), d.sk);
      for (int64_t i = 0; i < d.sq; ++i) {
        softmax_dropout_backward_row(ph + i * d.sk, factors.data() + i * d.sk, dprobs.data() + i * d.sk, d.sk);
      }
      // scores = scale * q . k^T
      gemm(false, false, d.sq, d.dim, d.sk, static_cast<float>(scale), dprobs.data(), d.sk, kh, ldk, 0.0f, dq, g.row);
      gemm(true, false, d.sk, d.dim, d.sq, static_cast<float>(scale), dprobs.data(), d.sk, qh, ldq, 0.0f, dk, g.row);
      if (bias_grad) {  // the blocks just written are still in cache
        float* sums = partial.data() + b * 3 * width + h * d.dim;
        column_sums(dq, g.row, d.sq, d.dim, sums);
        column_sums(dk, g.row, d.sk, d.dim, sums + width);
        column_sums(dv, g.row, d.sk, d.dim, sums + 2 * width);
      }
    }
  });
  if (bias_grad) {
    std::fill(bias_grad, bias_grad + 3 * width, 0.0f);
    for (int64_t b = 0; b < d.batch; ++b) {
      at::vec::map2([](Vec a, Vec c) { return a + c; }, bias_grad, bias_grad, partial.data() + b * 3 * width, 3 * width);
    }
  }
}

std::tuple<at::Tensor, at::Tensor> attention_forward(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                                     const std::optional<at::Tensor>& mask, double scale, int64_t seed,
                                                     int64_t threshold, double dropout_scale) {
  const Dims d = check(q, k, v);
  return forward_impl(d, operand(q), operand(k), operand(v), mask, scale, seed, threshold, dropout_scale, q.options());
}

// (d query, d key, d value), each [B, H, S, d] (views of [B, S, H, d] storage, the layout the
// projections' gradients want)
std::tuple<at::Tensor, at::Tensor, at::Tensor> attention_backward(const at::Tensor& grad_in, const at::Tensor& q,
                                                                  const at::Tensor& k, const at::Tensor& v,
                                                                  const at::Tensor& probs, double scale, int64_t seed,
                                                                  int64_t threshold, double dropout_scale) {
  const Dims d = check(q, k, v);
  at::Tensor dq = at::empty({d.batch, d.sq, d.heads, d.dim}, q.options());
  at::Tensor dk = at::empty({d.batch, d.sk, d.heads, d.dim}, q.options());
  at::Tensor dv = at::empty({d.batch, d.sk, d.heads, d.dim}, q.options());
  const GradOut g{{dq.mutable_data_ptr<float>(), dk.mutable_data_ptr<float>(), dv.mutable_data_ptr<float>()}, d.heads * d.dim};
  backward_impl(d, grad_in.contiguous(), operand(q), operand(k), operand(v), probs, scale, seed, threshold, dropout_scale,
                g, nullptr);
  return {dq.transpose(1, 2), dk.transpose(1, 2), dv.transpose(1, 2)};
}

// Self-attention on one packed projection: ``qkv`` is [B, S, 3 * H * d] (query, key, value side by
// side, as one product of the three weights gives them), taken without its bias; ``bias`` ([3 * H * d])
// is added as each head's blocks are read.
Dims check_packed(const at::Tensor& qkv, const std::optional<at::Tensor>& bias, int64_t heads) {
  TORCH_CHECK(qkv.device().is_cpu() && qkv.scalar_type() == at::kFloat && qkv.dim() == 3 && qkv.is_contiguous() &&
                  heads > 0 && qkv.size(2) % (3 * heads) == 0,
              "ernie_cl::attention: the packed projection must be a contiguous float32 CPU [B, S, 3 * H * d] tensor");
  TORCH_CHECK(!bias || (bias->scalar_type() == at::kFloat && bias->is_contiguous() && bias->numel() == qkv.size(2)),
              "ernie_cl::attention: the packed bias must be a contiguous float32 [3 * H * d] tensor");
  TORCH_CHECK(sgemm_ != nullptr, "ernie_cl::attention: this torch build has no MKL sgemm");
  return {qkv.size(0), heads, qkv.size(1), qkv.size(1), qkv.size(2) / (3 * heads)};
}

std::array<Operand, 3> packed_operands(const Dims& d, const at::Tensor& qkv, const std::optional<at::Tensor>& bias) {
  const int64_t width = d.heads * d.dim, row = 3 * width;
  const float* base = qkv.const_data_ptr<float>();
  const float* bp = bias ? bias->const_data_ptr<float>() : nullptr;
  std::array<Operand, 3> parts;
  for (int64_t p = 0; p < 3; ++p) {
    parts[p] = {base + p * width, d.sq * row, d.dim, row, bp ? bp + p * width : nullptr};
  }
  return parts;
}

std::tuple<at::Tensor, at::Tensor> packed_attention_forward(const at::Tensor& qkv, const std::optional<at::Tensor>& bias,
                                                            int64_t heads, const std::optional<at::Tensor>& mask,
                                                            double scale, int64_t seed, int64_t threshold,
                                                            double dropout_scale) {
  const Dims d = check_packed(qkv, bias, heads);
  const auto parts = packed_operands(d, qkv, bias);
  return forward_impl(d, parts[0], parts[1], parts[2], mask, scale, seed, threshold, dropout_scale, qkv.options());
}

// (d qkv [B, S, 3 * H * d], d bias [3 * H * d], empty without a bias)
std::tuple<at::Tensor, at::Tensor> packed_attention_backward(const at::Tensor& grad_in, const at::Tensor& qkv,
                                                             const std::optional<at::Tensor>& bias, int64_t heads,
                                                             const at::Tensor& probs, double scale, int64_t seed,
                                                             int64_t threshold, double dropout_scale) {
  const Dims d = check_packed(qkv, bias, heads);
  const auto parts = packed_operands(d, qkv, bias);
  const int64_t width = d.heads * d.dim;
  at::Tensor dqkv = at::empty(qkv.sizes(), qkv.options());
  at::Tensor dbias = at::empty({bias ? 3 * width : 0}, qkv.options());
  float* base = dqkv.mutable_data_ptr<float>();
  const GradOut g{{base, base + width, base + 2 * width}, 3 * width};
  backward_impl(d, grad_in.contiguous(), parts[0], parts[1], parts[2], probs, scale, seed, threshold, dropout_scale, g,
                bias ? dbias.mutable_data_ptr<float>() : nullptr);
  return {dqkv, dbias};
}

bool attention_available() { return sgemm_ != nullptr; }

}  // namespace

TORCH_LIBRARY_FRAGMENT(ernie_cl, m) {
  m.def("attention_available() -> bool", &attention_available);
  m.def("attention_forward(Tensor q, Tensor k, Tensor v, Tensor? mask, float scale, int seed, int threshold, "
        "float dropout_scale) -> (Tensor, Tensor)");
  m.def("attention_backward(Tensor grad, Tensor q, Tensor k, Tensor v, Tensor probs, float scale, int seed, "
        "int threshold, float dropout_scale) -> (Tensor, Tensor, Tensor)");
  m.def("packed_attention_forward(Tensor qkv, Tensor? bias, int heads, Tensor? mask, float scale, int seed, "
        "int threshold, float dropout_scale) -> (Tensor, Tensor)");
  m.def("packed_attention_backward(Tensor grad, Tensor qkv, Tensor? bias, int heads, Tensor probs, float scale, "
        "int seed, int threshold, float dropout_scale) -> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(ernie_cl, CPU, m) {
  m.impl("attention_forward", &attention_forward);
  m.impl("attention_backward", &attention_backward);
  m.impl("packed_attention_forward", &packed_attention_forward);
  m.impl("packed_attention_backward", &packed_attention_backward);
}
