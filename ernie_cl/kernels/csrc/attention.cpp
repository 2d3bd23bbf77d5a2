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
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <torch/library.h>

#include "counter_hash.h"

#include <algorithm>
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

// (output [B, Sq, H, d], probabilities before dropout [B, H, Sq, Sk])
std::tuple<at::Tensor, at::Tensor> attention_forward(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                                     const std::optional<at::Tensor>& mask, double scale, int64_t seed,
                                                     int64_t threshold, double dropout_scale) {
  const Dims d = check(q, k, v);
  if (mask) {
    TORCH_CHECK(mask->scalar_type() == at::kFloat && mask->dim() == 4 && mask->stride(3) == 1 &&
                    mask->size(0) == d.batch && mask->size(1) == d.heads && mask->size(2) == d.sq && mask->size(3) == d.sk,
                "ernie_cl::attention: the mask must be an additive float32 tensor expanded to [B, H, Sq, Sk]");
  }
  at::Tensor out = at::empty({d.batch, d.sq, d.heads, d.dim}, q.options());
  at::Tensor probs = at::empty({d.batch, d.heads, d.sq, d.sk}, q.options());
  const float* qp = q.const_data_ptr<float>();
  const float* kp = k.const_data_ptr<float>();
  const float* vp = v.const_data_ptr<float>();
  const float* mp = mask ? mask->const_data_ptr<float>() : nullptr;
  float* op = out.mutable_data_ptr<float>();
  float* pp = probs.mutable_data_ptr<float>();
  const float drop_scale = static_cast<float>(dropout_scale);
  at::parallel_for(0, d.batch * d.heads, 1, [&](int64_t first, int64_t last) {
    std::vector<float> dropped(d.sq * d.sk), factor(d.sk);
    std::vector<uint16_t> lanes(d.sk + 8);
    std::vector<uint64_t> words(d.sk / 4 + 2);
    for (int64_t bh = first; bh < last; ++bh) {
      const int64_t b = bh / d.heads, h = bh % d.heads;
      const float* qh = qp + b * q.stride(0) + h * q.stride(1);
      const float* kh = kp + b * k.stride(0) + h * k.stride(1);
      const float* vh = vp + b * v.stride(0) + h * v.stride(1);
      float* ph = pp + bh * d.sq * d.sk;
      gemm(false, true, d.sq, d.sk, d.dim, static_cast<float>(scale), qh, q.stride(2), kh, k.stride(2), 0.0f, ph, d.sk);
      for (int64_t i = 0; i < d.sq; ++i) {
        const float* mrow = mp ? mp + b * mask->stride(0) + h * mask->stride(1) + i * mask->stride(2) : nullptr;
        dropout_factors(static_cast<uint64_t>(seed), static_cast<uint64_t>((bh * d.sq + i) * d.sk), d.sk,
                        static_cast<uint32_t>(threshold), drop_scale, words.data(), lanes.data(), factor.data());
        softmax_dropout_row(ph + i * d.sk, mrow, factor.data(), dropped.data() + i * d.sk, d.sk);
      }
      const int64_t out_row = d.heads * d.dim;
      gemm(false, false, d.sq, d.dim, d.sk, 1.0f, dropped.data(), d.sk, vh, v.stride(2), 0.0f,
           op + b * d.sq * out_row + h * d.dim, out_row);
    }
  });
  return {out, probs};
}

// (d query, d key, d value), each [B, H, S, d] (views of [B, S, H, d] storage, the layout the
// projections' gradients want)
std::tuple<at::Tensor, at::Tensor, at::Tensor> attention_backward(const at::Tensor& grad_in, const at::Tensor& q,
                                                                  const at::Tensor& k, const at::Tensor& v,
                                                                  const at::Tensor& probs, double scale, int64_t seed,
                                                                  int64_t threshold, double dropout_scale) {
  const Dims d = check(q, k, v);
  // grad_in is [B, Sq, H, d]; read as [B, H, Sq, d] with strides
  const at::Tensor grad = grad_in.contiguous();
  TORCH_CHECK(grad.scalar_type() == at::kFloat && grad.dim() == 4 && grad.size(0) == d.batch &&
                  grad.size(1) == d.sq && grad.size(2) == d.heads && grad.size(3) == d.dim,
              "ernie_cl::attention: the output gradient must be float32 [B, Sq, H, d]");
  TORCH_CHECK(probs.is_contiguous() && probs.numel() == d.batch * d.heads * d.sq * d.sk,
              "ernie_cl::attention: probabilities must be the forward's contiguous [B, H, Sq, Sk]");
  at::Tensor dq = at::empty({d.batch, d.sq, d.heads, d.dim}, q.options());
  at::Tensor dk = at::empty({d.batch, d.sk, d.heads, d.dim}, q.options());
  at::Tensor dv = at::empty({d.batch, d.sk, d.heads, d.dim}, q.options());
  const float* gp = grad.const_data_ptr<float>();
  const float* qp = q.const_data_ptr<float>();
  const float* kp = k.const_data_ptr<float>();
  const float* vp = v.const_data_ptr<float>();
  const float* pp = probs.const_data_ptr<float>();
  float* dqp = dq.mutable_data_ptr<float>();
  float* dkp = dk.mutable_data_ptr<float>();
  float* dvp = dv.mutable_data_ptr<float>();
  const float drop_scale = static_cast<float>(dropout_scale);
  const int64_t row = d.heads * d.dim;  // row stride of every [B, S, H, d] tensor
  at::parallel_for(0, d.batch * d.heads, 1, [&](int64_t first, int64_t last) {
    std::vector<float> dropped(d.sq * d.sk), dprobs(d.sq * d.sk), factors(d.sq * d.sk);
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
      // d value = dropped^T . d out
      gemm(true, false, d.sk, d.dim, d.sq, 1.0f, dropped.data(), d.sk, gh, row, 0.0f, dvp + b * d.sk * row + h * d.dim, row);
      // d dropped = d out . value^T
      gemm(false, true, d.sq, d.sk, d.dim, 1.0f, gh, row, vp + b * v.stride(0) + h * v.stride(1), v.stride(2), 0.0f,
           dprobs.data(), d.sk);
      for (int64_t i = 0; i < d.sq; ++i) {
        softmax_dropout_backward_row(ph + i * d.sk, factors.data() + i * d.sk, dprobs.data() + i * d.sk, d.sk);
      }
      // scores = scale * q . k^T
      gemm(false, false, d.sq, d.dim, d.sk, static_cast<float>(scale), dprobs.data(), d.sk,
           kp + b * k.stride(0) + h * k.stride(1), k.stride(2), 0.0f, dqp + b * d.sq * row + h * d.dim, row);
      gemm(true, false, d.sk, d.dim, d.sq, static_cast<float>(scale), dprobs.data(), d.sk,
           qp + b * q.stride(0) + h * q.stride(1), q.stride(2), 0.0f, dkp + b * d.sk * row + h * d.dim, row);
    }
  });
  return {dq.transpose(1, 2), dk.transpose(1, 2), dv.transpose(1, 2)};
}

bool attention_available() { return sgemm_ != nullptr; }

}  // namespace

TORCH_LIBRARY_FRAGMENT(ernie_cl, m) {
  m.def("attention_available() -> bool", &attention_available);
  m.def("attention_forward(Tensor q, Tensor k, Tensor v, Tensor? mask, float scale, int seed, int threshold, "
        "float dropout_scale) -> (Tensor, Tensor)");
  m.def("attention_backward(Tensor grad, Tensor q, Tensor k, Tensor v, Tensor probs, float scale, int seed, "
        "int threshold, float dropout_scale) -> (Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(ernie_cl, CPU, m) {
  m.impl("attention_forward", &attention_forward);
  m.impl("attention_backward", &attention_backward);
}
