"""Precision facts behind docs/gpu.md, measured on the GPU at hand (needs CUDA torch and JAX):
float32 matmul error with TF32 off and on (torch flags, JAX's jax_default_matmul_precision, whose
"default" is TF32 on NVIDIA GPUs), and how much of cuDNN's float32 LSTM error is cuDNN's own.

    python scripts/gpu_precision_probe.py
"""
import numpy as np
import jax
import jax.numpy as jnp
import torch

jax.config.update("jax_enable_x64", True)
rng = np.random.default_rng(0)


def rel(r, exact):
    return float(np.abs(np.asarray(r, np.float64) - exact).max() / np.abs(exact).max())


for m, k, n in [(3, 27, 4), (16, 64, 32), (256, 256, 256), (1024, 1024, 1024)]:
    a, b = rng.standard_normal((m, k)), rng.standard_normal((k, n))
    exact, row = a @ b, []
    for prec in ("highest", "tensorfloat32", "default"):
        with jax.default_matmul_precision(prec):
            r = jax.jit(jnp.dot)(jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32))
        row.append(f"jax {prec} {rel(r, exact):.1e}")
    for tf32 in (False, True):
        torch.backends.cuda.matmul.allow_tf32 = tf32
        ta, tb = (torch.tensor(v, dtype=torch.float32, device="cuda") for v in (a, b))
        row.append(f"torch tf32={tf32} {rel((ta @ tb).double().cpu().numpy(), exact):.1e}")
    print(f"matmul {m}x{k} @ {k}x{n}, float32 relative error:", " | ".join(row))

torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
N, T, D, H = 4, 8, 16, 12
x, h0 = rng.standard_normal((N, T, D)), rng.standard_normal((N, H))
weights = [rng.standard_normal((4 * H, D)) * 0.5, rng.standard_normal((4 * H, H)) * 0.5,
           rng.standard_normal(4 * H) * 0.5, np.zeros(4 * H)]


def lstm(dtype, device, cudnn):
    torch.backends.cudnn.enabled = cudnn
    params = [torch.tensor(w, dtype=dtype, device=device, requires_grad=True) for w in weights]
    hx = (torch.tensor(h0, dtype=dtype, device=device).unsqueeze(0), torch.zeros(1, N, H, dtype=dtype, device=device))
    h, _, _ = torch.lstm(torch.tensor(x, dtype=dtype, device=device), hx, params, True, 1, 0.0, True, False, True)
    h.sum().backward()
    return h.detach().double().cpu().numpy(), params[0].grad.double().cpu().numpy()


exact_h, exact_g = lstm(torch.float64, "cpu", True)
for device, cudnn in (("cpu", True), ("cuda", True), ("cuda", False)):
    h, g = lstm(torch.float32, device, cudnn)
    print(f"torch.lstm float32 on {device}{' (cuDNN)' if device == 'cuda' and cudnn else ''}, TF32 off: "
          f"output max abs error {np.abs(h - exact_h).max():.1e}, grad w_ih max abs error {np.abs(g - exact_g).max():.1e}")
