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


def hidden_swaps(h: int, w: int, kh: int, kw: int, *, stride: int, pad: int) -> list[str]:
    """The height/width swaps that give the same size as the right formula on this geometry.

    H' = 1 + (H + 2 pad - HH) // stride; a swap computes it from W, or from the kernel's width WW, or
    both (then it is W'), and likewise for W'. The floor division can absorb a swap: with stride 2,
    H = 6, W = 3, HH = 3, WW = 2 and pad 1, W' is 2 from either kernel size. A geometry where this
    returns [] also has H != W, HH != WW and H' != W' (each is one of the swaps), so swapped loop
    bounds, window extents and crops cannot pass either."""
    size = lambda a, k: 1 + (a + 2 * pad - k) // stride  # noqa: E731
    right = {"H'": size(h, kh), "W'": size(w, kw)}
    swapped = {"H' from W": ("H'", size(w, kh)), "H' from the kernel width": ("H'", size(h, kw)),
               "H' from W and the kernel width (= W')": ("H'", size(w, kw)),
               "W' from H": ("W'", size(h, kw)), "W' from the kernel height": ("W'", size(w, kh)),
               "W' from H and the kernel height (= H')": ("W'", size(h, kh))}
    out = [what for what, (which, value) in swapped.items() if value == right[which]]
    return out + ["H = W"] * (h == w) + ["HH = WW"] * (kh == kw)


# (N, C, F, (HH, WW), stride, pad, (H', W'), slack (h, w)); every output height != width but the 1st.
# The first three (the ci profile's) are the edge, the rich and the pad-0 geometry; the last two of
# them hide no height/width swap (hidden_swaps, checked below): stride 2, no remainder in one
# direction and one in the other, which is what it takes for kernel sizes 2 and 3 to give different
# outputs in both directions.
GEOMETRIES = (
    (1, 1, 1, (1, 1), 1, 0, (2, 3), (0, 0)),  # batch 1, one channel, 1x1 kernel, pad 0
    (2, 3, 4, (3, 2), 2, 1, (3, 2), (1, 0)),  # N, C, F distinct; stride 2, pad 1: overlapping in H, not
                                              # in W; the floor drops a row
    (2, 2, 3, (2, 3), 2, 0, (2, 3), (0, 1)),  # the same turned through 90°, pad 0: the floor drops a column
    (2, 3, 2, (3, 2), 1, 1, (5, 4), (0, 0)),  # overlapping windows, stride 1, pad 1
    (1, 3, 2, (1, 2), 3, 0, (2, 1), (2, 1)),  # stride larger than the kernel: input pixels never seen
    (2, 1, 1, (2, 3), 2, 2, (3, 4), (0, 1)),  # pad 2 > kernel/2: corner outputs see only padding
)
CI = 3  # geometries the ci profile draws: the first three
for _i, _g in enumerate(GEOMETRIES):  # a bad table fails at import, not as an invalid example
    _h, _w = input_size(_g[6][0], _g[3][0], _g[4], _g[5], _g[7][0]), input_size(_g[6][1], _g[3][1], _g[4], _g[5], _g[7][1])
    _hidden = hidden_swaps(_h, _w, *_g[3], stride=_g[4], pad=_g[5])
    assert _i not in (1, 2) or not _hidden, (_g, _hidden)


def _conv_cases(regime, breadth):
    @st.composite
    def cases(draw):
        n, c, f, (hh, ww), stride, pad, (ho, wo), (rh, rw) = draw(geometry(breadth, *GEOMETRIES, ci=CI))
        h, w = input_size(ho, hh, stride, pad, rh), input_size(wo, ww, stride, pad, rw)
        return Case({"x": draw(float_arrays((n, c, h, w), regime)),
                     "w": draw(float_arrays((f, c, hh, ww), "typical", scale=0.5)),
                     "b": draw(float_arrays((f,), "typical"))},
                    {"stride": stride, "pad": pad})
    return cases()


register(OpSpec(name="conv2d", family="conv", source="seed 001 § 卷积层; cs231n (conv_forward_naive)",
                inputs=_conv_cases))
