"""Slips in writing a `@gradaudit.derivation`, each explained in the user's terms (gradaudit/_slips.py)
instead of the error Python, NumPy or torch raises at it."""
import textwrap

import pytest

import gradaudit


def declare(tmp_path, source: str, name: str = "slip"):
    """Import a module written as a user writes it (a file: annotations as in real code)."""
    import importlib.util

    path = tmp_path / f"{name}.py"
    future = "from __future__ import annotations\n"
    head = future if source.startswith(future) else ""
    path.write_text(head + textwrap.dedent(source[len(head):]))
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("future", ["", "from __future__ import annotations\n"])
def test_a_shape_written_as_a_string_says_write_a_tuple(tmp_path, future):
    with pytest.raises(TypeError, match=r'argument \'b\' is annotated with the string "D", not a tuple.*write \("D",\)'):
        declare(tmp_path, future + """
            import gradaudit

            @gradaudit.derivation
            def bias(xp, x: ("N", "D"), b: ("D")):
                return x + b
        """)


def test_two_symbols_joined_by_python_are_split_in_the_hint(tmp_path):
    with pytest.raises(TypeError, match=r'Python joined them .*write \("N", "D"\)'):
        declare(tmp_path, """
            import gradaudit

            @gradaudit.derivation
            def double(xp, x: ("N" "D")):
                return 2 * x
        """)


def test_a_forward_without_xp_first(tmp_path):
    with pytest.raises(TypeError, match=r"first parameter is the array namespace: write def linear\(xp, X, \.\.\.\)"):
        declare(tmp_path, """
            import gradaudit

            @gradaudit.derivation
            def linear(X: ("N", "D"), W: ("D", "M")):
                return X @ W
        """)


def test_sizes_naming_no_symbol(tmp_path):
    with pytest.raises(TypeError, match=r"sizes= names 'd', which no shape uses.*'d': did you mean 'D'\?"):
        declare(tmp_path, """
            import gradaudit

            @gradaudit.derivation(sizes={"d": (2, 3)})
            def double(xp, x: ("N", "D")):
                return 2 * x
        """)


def test_numpy_on_a_tensor_and_a_symbol_typo_are_named_in_the_record(tmp_path):
    module = declare(tmp_path, """
        import numpy as np
        import gradaudit

        @gradaudit.derivation
        def squash(xp, x: ("N", "D")):
            return np.tanh(x)  # should be xp.tanh

        @squash.backward
        def squash_backward(dy, x):
            return dy * (1 - np.tanh(x) ** 2)

        @gradaudit.derivation
        def affine(xp, x: ("N", "D"), w: ("D", "M"), b: ("m",)):  # "m": a typo for "M"
            return x @ w + b

        @affine.backward
        def affine_backward(dy, x, w, b):
            return dy @ w.T, x.T @ dy, dy.sum(axis=0)
    """, name="slips_in_use")
    recs = gradaudit.check(module.squash, module.affine, profile="ci", oracles=("torch",), dtypes=("float64",),
                           report=tmp_path / "r", raise_on_failure=False)
    squash = [r for r in recs if r["target"] == "squash_backward" and r["status"] == "error"]
    assert squash, [(r["target"], r["status"], r["message"]) for r in recs]
    assert "use xp.tanh for np.tanh" in squash[0]["message"] and "detach()" in squash[0]["message"]
    assert "Use tensor.detach().numpy() instead" not in squash[0]["message"]
    affine = [r for r in recs if r["target"] == "affine_backward" and r["status"] == "error"]
    assert affine, [(r["target"], r["status"], r["message"]) for r in recs]
    msg = affine[0]["message"]
    assert "the sizes drawn: N=" in msg and "'M' and 'm' are different symbols (a typo?)" in msg
