// The one TU of the NF4 linear that includes torch/autograd.h (slow header).
#include "trainer/model/nf4_linear.h"

#include <torch/autograd.h>

namespace qlora::model {

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// ctx->saved_data holds the NF4 fields (tensors by reference, no copies).
struct NF4LinearFunction : public torch::autograd::Function<NF4LinearFunction> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const kernels::NF4Tensor& w) {
    ctx->saved_data["packed"] = w.packed;
    ctx->saved_data["absmax"] = w.absmax;
    ctx->saved_data["dq"] = w.double_quant();
    if (w.double_quant()) ctx->saved_data["nested_absmax"] = w.nested_absmax;
    ctx->saved_data["nested_offset"] = static_cast<double>(w.nested_offset);
    ctx->saved_data["blocksize"] = w.blocksize;
    ctx->saved_data["shape"] = w.shape;
    ctx->saved_data["dtype"] = static_cast<int64_t>(w.dtype);
    return kernels::nf4_linear(x, w);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    kernels::NF4Tensor w;
    w.packed = ctx->saved_data["packed"].toTensor();
    w.absmax = ctx->saved_data["absmax"].toTensor();
    if (ctx->saved_data["dq"].toBool()) w.nested_absmax = ctx->saved_data["nested_absmax"].toTensor();
    w.nested_offset = static_cast<float>(ctx->saved_data["nested_offset"].toDouble());
    w.blocksize = ctx->saved_data["blocksize"].toInt();
    w.shape = ctx->saved_data["shape"].toIntVector();
    w.dtype = static_cast<at::ScalarType>(ctx->saved_data["dtype"].toInt());
    at::Tensor dy = grad_outputs[0];
    at::Tensor dx = dy.defined() ? kernels::nf4_linear_grad_input(dy.contiguous(), w) : at::Tensor();
    return {dx, at::Tensor()};
  }
};

}  // namespace

at::Tensor nf4_linear_frozen(const at::Tensor& x, const kernels::NF4Tensor& w) {
  return NF4LinearFunction::apply(x, w);
}

}  // namespace qlora::model
