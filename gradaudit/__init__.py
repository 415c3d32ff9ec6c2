"""gradaudit: differential testing of hand-derived gradients against PyTorch, JAX and finite differences.

Importing gradaudit imports neither torch nor jax: the oracles load their framework on first use.

    @gradaudit.derivation              a forward (array API) whose backward you derived by hand
    gradaudit.function(fn, ...)        a torch.autograd.Function, jax.custom_vjp/custom_jvp (or any
                                       torch or JAX function) whose derivative is written by hand
    gradaudit.check(...)               check derivations or a cs231n-style module from a test
    gradaudit.array/const/labels/onehot/mask/choice   what to draw for an argument
"""
__version__ = "0.1.0"

from .derivation import Derivation, array, choice, const, derivation, labels, mask, onehot
from .function import FunctionSubject, function


def check(*things, **options):
    """Check `@gradaudit.derivation`s, `gradaudit.function` subjects, modules or .py paths in this
    process; see gradaudit.audit.check."""
    from .audit import check as _check

    return _check(*things, **options)


__all__ = ["Derivation", "FunctionSubject", "array", "check", "choice", "const", "derivation", "function", "labels",
           "mask", "onehot"]
