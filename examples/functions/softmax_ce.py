"""A fused softmax cross-entropy as a torch.autograd.Function, with a learnable logit scale (CLIP's
`logit_scale`): loss = mean_i [ logsumexp(s·z_i) − s·z_i[y_i] ].

    d loss / d z = s · (softmax(s·z) − onehot(y)) / N · g
    d loss / d s = Σ_ij z_ij · (softmax(s·z) − onehot(y))_ij / N · g

`SoftmaxCrossEntropyUnreduced` is its planted twin: the scale's gradient is returned per element,
shape (N, C), without the sum over the axes along which the 0-d scale was broadcast. autograd's
engine sums a gradient like that silently before it reaches the scale, so training works and
`gradcheck` passes; the rule's contract (one gradient per input, of the input's shape) is broken,
and anything that reads the backward's output itself gets the wrong shape.

    gradaudit audit examples/functions/softmax_ce.py --dtypes float64
"""
import torch

import gradaudit


class SoftmaxCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, scale, labels):
        z = scale * logits
        z = z - z.max(dim=1, keepdim=True).values  # stable: exp never overflows
        lse = torch.log(torch.exp(z).sum(dim=1))
        loss = (lse - z.gather(1, labels[:, None])[:, 0]).mean()
        ctx.save_for_backward(logits, scale, labels)
        return loss

    @staticmethod
    def backward(ctx, g):
        logits, scale, labels = ctx.saved_tensors
        n = logits.shape[0]
        p = torch.softmax(scale * logits, dim=1)
        p[torch.arange(n), labels] -= 1  # softmax − onehot, in place on a fresh tensor
        dz = p * (g / n)
        return dz * scale, (dz * logits).sum(), None


class SoftmaxCrossEntropyUnreduced(SoftmaxCrossEntropy):
    @staticmethod
    def backward(ctx, g):
        logits, scale, labels = ctx.saved_tensors
        n = logits.shape[0]
        p = torch.softmax(scale * logits, dim=1)
        p[torch.arange(n), labels] -= 1
        dz = p * (g / n)
        return dz * scale, dz * logits, None  # planted: no sum over the axes `scale` was broadcast along


def softmax_cross_entropy(xp, logits, scale, labels):
    """The same loss against the array-API namespace `xp`: what the other framework (JAX) runs."""
    z = scale * logits
    z = z - xp.max(z, axis=1, keepdims=True)
    lse = xp.log(xp.sum(xp.exp(z), axis=1))
    onehot = xp.astype(labels[:, None] == xp.arange(logits.shape[1])[None, :], z.dtype)
    return xp.mean(lse - xp.sum(z * onehot, axis=1))


SHAPES = dict(logits=("N", "C"), scale=gradaudit.array(low=0.5, high=2.0),
              labels=gradaudit.labels("N", classes="C"))

softmax_ce = gradaudit.function(SoftmaxCrossEntropy, reference=softmax_cross_entropy, **SHAPES)
softmax_ce_unreduced = gradaudit.function(SoftmaxCrossEntropyUnreduced, reference=softmax_cross_entropy, **SHAPES)
