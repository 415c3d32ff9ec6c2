"""log-sum-exp over the last axis as a `jax.custom_vjp`, stable (max-shifted), with the softmax as its
hand-written rule:

    lse(x) = m + log Σ_j exp(x_j − m),   m = max_j x_j
    d lse / d x = g · softmax(x) = g · exp(x − lse(x))

`logsumexp_f32` is its planted twin: its bwd computes the softmax in float32 "for speed" and returns
that. jax.grad hands a float64 input a float32 gradient (no error, no warning) and `check_grads`
passes, as its tolerance is far above float32's rounding.

    gradaudit audit examples/functions/logsumexp.py --dtypes float64
"""
import jax
import jax.numpy as jnp

import gradaudit

jax.config.update("jax_enable_x64", True)  # float64 inputs stay float64


@jax.custom_vjp
def logsumexp(x):
    m = jax.lax.stop_gradient(jnp.max(x, axis=-1, keepdims=True))
    return (m + jnp.log(jnp.sum(jnp.exp(x - m), axis=-1, keepdims=True)))[..., 0]


def _fwd(x):
    out = logsumexp(x)
    return out, (x, out)


def _bwd(res, g):
    x, out = res
    return (g[..., None] * jnp.exp(x - out[..., None]),)


logsumexp.defvjp(_fwd, _bwd)


@jax.custom_vjp
def logsumexp_f32(x):
    m = jax.lax.stop_gradient(jnp.max(x, axis=-1, keepdims=True))
    return (m + jnp.log(jnp.sum(jnp.exp(x - m), axis=-1, keepdims=True)))[..., 0]


def _bwd_f32(res, g):
    x, out = res
    p = jnp.exp((x - out[..., None]).astype(jnp.float32))  # planted: the gradient comes back float32
    return (g[..., None].astype(jnp.float32) * p,)


logsumexp_f32.defvjp(lambda x: (logsumexp_f32(x), (x, logsumexp_f32(x))), _bwd_f32)


def logsumexp_reference(xp, x):
    """The same forward against the array-API namespace `xp`: what the other framework (torch) runs."""
    m = xp.max(x, axis=-1, keepdims=True)
    return (m + xp.log(xp.sum(xp.exp(x - m), axis=-1, keepdims=True)))[..., 0]


lse = gradaudit.function(logsumexp, reference=logsumexp_reference, order=2, x=("N", "D"))
lse_f32 = gradaudit.function(logsumexp_f32, reference=logsumexp_reference, order=2, name="logsumexp_f32",
                             x=("N", "D"))
