"""LSTM, one step and a sequence (c0 = 0), gate blocks i, f, o, g in the cs231n order."""
from hypothesis import strategies as st

from ..spec import Case, OpSpec
from ..strategies import float_arrays
from . import register
from ._common import geometry
from .rnn import STEP_GEOMETRIES, W_SCALE, seq_cases, weights


def _step_cases(regime, breadth):
    @st.composite
    def cases(draw):
        n, d, h = draw(geometry(breadth, *STEP_GEOMETRIES))
        return Case({"x": draw(float_arrays((n, d), regime)),
                     "prev_h": draw(float_arrays((n, h), "typical", scale=W_SCALE)),
                     "prev_c": draw(float_arrays((n, h), "typical")), **weights(draw, d, h, gates=4)})
    return cases()


register(OpSpec(name="lstm_step", family="lstm", source="seed 000 § LSTM; cs231n (lstm_step_backward)",
                inputs=_step_cases, regimes=("typical", "saturated")))
register(OpSpec(name="lstm", family="lstm", source="seed 000 § LSTM; cs231n (lstm_backward)",
                inputs=seq_cases(gates=4), regimes=("typical", "saturated")))
