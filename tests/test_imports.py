"""The thing under test must not lean on the frameworks that judge it, and the front door stays light."""
import subprocess
import sys

import pytest


@pytest.mark.parametrize("module", ["reference_impl", "gradaudit", "gradaudit.cli", "properties", "reports"])
def test_import_pulls_in_neither_torch_nor_jax(module):
    code = (f"import sys, {module}; bad = [m for m in ('torch', 'jax') if m in sys.modules]; "
            "print(','.join(bad)); sys.exit(1 if bad else 0)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, f"importing {module} imported {r.stdout.strip()} ({r.stderr[-500:]})"


def test_reference_impl_source_names_no_framework():
    import pathlib

    import reference_impl

    root = pathlib.Path(reference_impl.__file__).parent
    for f in root.glob("*.py"):
        text = f.read_text()
        for fw in ("import torch", "import jax", "from torch", "from jax"):
            assert fw not in text, f"{f.name} contains {fw!r}: reference_impl is NumPy only"
