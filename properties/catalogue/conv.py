"""2-D convolution (cross-correlation), NCHW, stride and zero padding."""
from hypothesis import strategies as st

from ..spec import Case, OpSpec
from ..strategies import float_arrays
from . import register
from ._common import geometry


def input_size(out: int, kernel: int, stride: int, pad: int, slack: int) -> int:
    """The input size that gives `out` outputs: out = 1 + (size + 2 pad - kernel) // stride, with
    `slack` (< stride) input rows that the floor division drops."""
    assert 0 <= slack < stride
    size = (out - 1) * stride + kernel - 2 * pad + slack
    assert size >= 1 and size + 2 * pad >= kernel
    return size


# (N, C, F, (HH, WW), stride, pad, (H', W'), slack (h, w)); every output height != width but the 1st.
# The first two (the ci profile's) are the edge and the rich geometry.
GEOMETRIES = (
    (1, 1, 1, (1, 1), 1, 0, (2, 3), (0, 0)),  # batch 1, one channel, 1x1 kernel, pad 0
    (2, 3, 4, (3, 2), 2, 1, (3, 2), (1, 1)),  # N, C, F distinct; stride 2, pad 1: overlapping in H, not
                                              # in W; the floor drops a row and a column
    (2, 3, 2, (3, 2), 1, 1, (5, 4), (0, 0)),  # overlapping windows, stride 1, pad 1
    (1, 3, 2, (1, 2), 3, 0, (2, 1), (2, 1)),  # stride larger than the kernel: input pixels never seen
    (2, 1, 1, (2, 3), 2, 2, (3, 4), (0, 1)),  # pad 2 > kernel/2: corner outputs see only padding
)
for _g in GEOMETRIES:  # a bad table fails at import, not as an invalid example
    input_size(_g[6][0], _g[3][0], _g[4], _g[5], _g[7][0]), input_size(_g[6][1], _g[3][1], _g[4], _g[5], _g[7][1])


def _conv_cases(regime, breadth):
    @st.composite
    def cases(draw):
        n, c, f, (hh, ww), stride, pad, (ho, wo), (rh, rw) = draw(geometry(breadth, *GEOMETRIES))
        h, w = input_size(ho, hh, stride, pad, rh), input_size(wo, ww, stride, pad, rw)
        return Case({"x": draw(float_arrays((n, c, h, w), regime)),
                     "w": draw(float_arrays((f, c, hh, ww), "typical", scale=0.5)),
                     "b": draw(float_arrays((f,), "typical"))},
                    {"stride": stride, "pad": pad})
    return cases()


register(OpSpec(name="conv2d", family="conv", source="seed 001 § 卷积层; cs231n (conv_forward_naive)",
                inputs=_conv_cases))
