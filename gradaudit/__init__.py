"""gradaudit: differential testing of hand-derived gradients against PyTorch, JAX and finite differences.

Importing gradaudit imports neither torch nor jax: the oracles load their framework on first use.

    @gradaudit.derivation              a forward (array API) whose backward you derived by hand
    gradaudit.function(fn, ...)        a torch.autograd.Function, jax.custom_vjp/custom_jvp (or any
                                       torch or JAX function) whose derivative is written by hand
    gradaudit.check(...)               check derivations, cs231n functions, a notebook's globals() or files
                                       from a test or a notebook; returns a CheckResult that displays itself
    gradaudit.array/const/labels/onehot/mask/choice   what to draw for an argument
"""
__version__ = "0.1.0"

from .api import CheckFailed, check
from .derivation import Derivation, array, choice, const, derivation, labels, mask, onehot
from .function import FunctionSubject, function
from .results import CheckResult


__all__ = ["CheckFailed", "CheckResult", "Derivation", "FunctionSubject", "array", "check", "choice", "const", "derivation",
           "function", "labels", "mask", "onehot"]
