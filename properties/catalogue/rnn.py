"""Vanilla tanh RNN: one step, full BPTT over T steps, and the notes' RNN with a softmax
cross-entropy at every step. Row-vector batches (cs231n layout: x_t (N, D) times wx (D, H))."""
from hypothesis import strategies as st

from ..spec import Case, OpSpec
from ..strategies import float_arrays, labels
from . import register
from ._common import geometry

W_SCALE = 0.5  # weights ~ N(0, 1/4): typical states stay in tanh's responsive range


def weights(draw, d, h, gates=1):
    return {"wx": draw(float_arrays((d, gates * h), "typical", scale=W_SCALE)),
            "wh": draw(float_arrays((h, gates * h), "typical", scale=W_SCALE)),
            "b": draw(float_arrays((gates * h,), "typical", scale=W_SCALE))}


# (N, D, H) and (N, T, D, H): batch 1 and T = 1 first (the ci profile's edge), then all dims distinct
# (its rich one); D != H everywhere (a transposed weight cannot type-check by luck); D = 1 once.
# Three each: a scan over T compiles in ~1-3 s per shape.
STEP_GEOMETRIES = ((1, 3, 2), (2, 4, 3), (3, 2, 4))
SEQ_GEOMETRIES = ((1, 1, 3, 2), (2, 3, 4, 5), (3, 4, 1, 4))


def _step_cases(regime, breadth):
    @st.composite
    def cases(draw):
        n, d, h = draw(geometry(breadth, *STEP_GEOMETRIES))
        return Case({"x": draw(float_arrays((n, d), regime)),
                     "prev_h": draw(float_arrays((n, h), "typical", scale=W_SCALE)), **weights(draw, d, h)})
    return cases()


def seq_cases(gates=1):
    """Sequences x (N, T, D) from h0 (N, H) through `gates` blocks of H (1: tanh RNN, 4: LSTM)."""
    def inputs(regime, breadth):
        @st.composite
        def cases(draw):
            n, t, d, h = draw(geometry(breadth, *SEQ_GEOMETRIES))
            return Case({"x": draw(float_arrays((n, t, d), regime)),
                         "h0": draw(float_arrays((n, h), "typical", scale=W_SCALE)), **weights(draw, d, h, gates)})
        return cases()
    return inputs


# (N, T, D, H, C): edge, then all dims distinct (the ci profile's two); C = 1 is a single class
# (every step's loss 0)
SOFTMAX_SEQ_GEOMETRIES = ((1, 1, 3, 2, 3), (2, 3, 4, 5, 6), (2, 3, 4, 3, 1), (3, 4, 1, 4, 5))


def _softmax_seq_cases(regime, breadth):
    # saturated: the inputs drive tanh to ±1. large / overflow: the class offsets c put the scores
    # z_t = h_t v + c where exp overflows (float32 / float64) and a naive softmax gives inf/NaN;
    # v stays typical. (A large v would make the scores |v| times more sensitive to every upstream
    # weight: the loss's curvature in wx, wh, x then grows like |v|^2 and float64 central
    # differences, whose step follows the input's size, lose their accuracy there: a limit of the
    # numeric oracle, not a property of the derivation.)
    @st.composite
    def cases(draw):
        n, t, d, h, c = draw(geometry(breadth, *SOFTMAX_SEQ_GEOMETRIES))
        xr = regime if regime == "saturated" else "typical"
        cr = regime if regime in ("large", "overflow") else "typical"
        arrays = {"x": draw(float_arrays((n, t, d), xr)),
                  "h0": draw(float_arrays((n, h), "typical", scale=W_SCALE)), **weights(draw, d, h),
                  "v": draw(float_arrays((h, c), "typical")), "c": draw(float_arrays((c,), cr))}
        y = draw(labels(n * t, c)).reshape(n, t)
        return Case(arrays, {"y": y})
    return cases()


register(OpSpec(name="rnn_step", family="rnn", source="seed 000 § RNN (rnn_step_backward); cs231n",
                inputs=_step_cases, regimes=("typical", "saturated")))
register(OpSpec(name="rnn", family="rnn", source="seed 000 § RNN; seed 001 § RNN (BPTT); cs231n",
                inputs=seq_cases(), regimes=("typical", "saturated")))
register(OpSpec(name="rnn_softmax_sequence", family="rnn", source="seed 000 § RNN; seed 001 § RNN",
                inputs=_softmax_seq_cases, regimes=("typical", "saturated", "large", "overflow")))
