"""The op catalogue: every module in this package registers its ops with `properties.spec.register`.

Adding an op: its reference pair in reference_impl/, its framework forwards in oracles/torch_ops.py
and oracles/jax_ops.py, and one `register(OpSpec(...))` in the family's module here.
"""
import importlib
import pkgutil

from ..spec import CATALOGUE

for _m in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
    importlib.import_module(f"{__name__}.{_m.name}")

__all__ = ["CATALOGUE"]
