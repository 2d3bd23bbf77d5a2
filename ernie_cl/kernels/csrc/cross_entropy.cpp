// Cross-entropy over a vocabulary-sized head, forward and backward in one pass each.
//
// torch's F.cross_entropy on CPU is log_softmax (writes an N x V tensor) + nll_loss; its backward
// zero-fills an N x V tensor for nll_loss, then log_softmax's backward reads two N x V tensors and
// writes a third. Here the forward reads the logits once per row (max, then sum of exponentials over
// a row that is still in cache) and keeps only each row's log-sum-exp; the backward writes
// softmax - one_hot, times the row's incoming gradient, in one pass. Rows are independent and each
// is summed by one thread, so results do not depend on the thread count. Exponentials use ATen's
// faster exp_u20 (a few ulp; the tests hold values and gradients to F.cross_entropy's).
//
// The forward also returns each row's prediction, the first maximal index (torch's max(-1).indices,
// a NaN counting as maximal), found by a scan of the row while it is in cache: the training step's
// accuracy needs it, and a separate max over the [targets x vocabulary] logits read them from memory
// again (7 ms a step at the benchmark's sizes).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>

namespace {

using Vec = at::vec::Vectorized<float>;

void check(const at::Tensor& logits, const at::Tensor& targets) {
  TORCH_CHECK(logits.device().is_cpu() && logits.scalar_type() == at::kFloat && logits.dim() == 2,
              "ernie_cl::cross_entropy: logits must be a 2-D float32 CPU tensor");
  TORCH_CHECK(targets.scalar_type() == at::kLong && targets.dim() == 1 && targets.size(0) == logits.size(0),
              "ernie_cl::cross_entropy: targets must be int64, one per row");
}

// The first index of ``row`` that holds ``top``, its maximum (the first NaN when ``top`` is NaN)
int64_t first_index_of(const float* row, int64_t width, float top) {
  const int64_t step = Vec::size();
  const bool nan = std::isnan(top);
  const Vec target(top);
  for (int64_t j = 0; j < width; j += step) {
    const int64_t c = std::min(step, width - j);
    const Vec v = Vec::loadu(row + j, c);
    // the lanes sought compare to all-zero bits, which zero_mask reports; lanes past c are not the row's
    int64_t bits = (nan ? (v == v) : (v != target)).zero_mask();
    if (c < step) bits &= (int64_t{1} << c) - 1;
    if (bits) return j + __builtin_ctzll(static_cast<unsigned long long>(bits));
  }
  return width - 1;  // not reached: top is one of the row's values
}

// (per-row loss, per-row log-sum-exp, per-row prediction)
std::tuple<at::Tensor, at::Tensor, at::Tensor> cross_entropy_forward(const at::Tensor& logits_in, const at::Tensor& targets_in) {
  check(logits_in, targets_in);
  const at::Tensor logits = logits_in.contiguous();
  const at::Tensor targets = targets_in.contiguous();
  const int64_t rows = logits.size(0), width = logits.size(1);
  at::Tensor loss = at::empty({rows}, logits.options());
  at::Tensor lse = at::empty({rows}, logits.options());
  at::Tensor predicted = at::empty({rows}, targets.options());
  const float* x = logits.const_data_ptr<float>();
  const int64_t* t = targets.const_data_ptr<int64_t>();
  float* loss_out = loss.mutable_data_ptr<float>();
  float* lse_out = lse.mutable_data_ptr<float>();
  int64_t* predicted_out = predicted.mutable_data_ptr<int64_t>();
  for (int64_t i = 0; i < rows; ++i) {
    TORCH_CHECK(t[i] >= 0 && t[i] < width, "ernie_cl::cross_entropy: target ", t[i], " out of range [0, ", width, ")");
  }
  at::parallel_for(0, rows, 1, [&](int64_t first, int64_t last) {
    for (int64_t i = first; i < last; ++i) {
      const float* row = x + i * width;
      const float top = at::vec::reduce_all<float>([](Vec& a, Vec& b) { return at::vec::maximum(a, b); }, row, width);
      const float sum = at::vec::map_reduce_all<float>(
          [top](Vec v) { return (v - Vec(top)).exp_u20(); }, [](Vec a, Vec b) { return a + b; }, row, width);
      const float log_sum = top + std::log(sum);
      lse_out[i] = log_sum;
      loss_out[i] = log_sum - row[t[i]];
      predicted_out[i] = first_index_of(row, width, top);
    }
  });
  return {loss, lse, predicted};
}

// d loss_i / d logits_ij = grad_i * (softmax_ij - [j == t_i])
at::Tensor cross_entropy_backward(const at::Tensor& grad_in, const at::Tensor& logits_in, const at::Tensor& lse_in,
                                  const at::Tensor& targets_in) {
  check(logits_in, targets_in);
  const at::Tensor logits = logits_in.contiguous();
  const at::Tensor targets = targets_in.contiguous();
  const at::Tensor grad = grad_in.to(at::kFloat).contiguous();
  const at::Tensor lse = lse_in.contiguous();
  const int64_t rows = logits.size(0), width = logits.size(1);
  at::Tensor out = at::empty_like(logits);
  const float* x = logits.const_data_ptr<float>();
  const float* g = grad.const_data_ptr<float>();
  const float* l = lse.const_data_ptr<float>();
  const int64_t* t = targets.const_data_ptr<int64_t>();
  float* dx = out.mutable_data_ptr<float>();
  at::parallel_for(0, rows, 1, [&](int64_t first, int64_t last) {
    for (int64_t i = first; i < last; ++i) {
      const float shift = l[i], scale = g[i];
      at::vec::map([shift, scale](Vec v) { return (v - Vec(shift)).exp_u20() * Vec(scale); }, dx + i * width, x + i * width, width);
      dx[i * width + t[i]] -= scale;
    }
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(ernie_cl, m) {
  m.def("cross_entropy_forward(Tensor logits, Tensor targets) -> (Tensor, Tensor, Tensor)");
  m.def("cross_entropy_backward(Tensor grad, Tensor logits, Tensor lse, Tensor targets) -> Tensor");
}

TORCH_LIBRARY_IMPL(ernie_cl, CPU, m) {
  m.impl("cross_entropy_forward", &cross_entropy_forward);
  m.impl("cross_entropy_backward", &cross_entropy_backward);
}
