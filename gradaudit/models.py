"""The cs231n model classes under audit: a class with `params` and `loss(X, y)` returning
`(loss, grads)` — `TwoLayerNet` (assignment 1's `neural_net.py` and assignment 2's `fc_net.py`),
`FullyConnectedNet` (with batch/layer normalisation and dropout), `ThreeLayerConvNet` and the
captioning RNN of assignment 3.

Each class is constructed with small sizes (the arguments its constructor takes, by name), its
`params` are replaced by the case's arrays, and every entry of `grads` is judged against the
frameworks' gradient of the same network built from the catalogue's framework forwards
(oracles/torch_ops.py, jax_ops.py: `fc_net`, `conv_net`, `captioning_rnn`) and against finite
differences of the class's own `loss`. Test mode (`loss(X)`) is its own target: the scores are
compared with the frameworks' (its "gradient" is zero on both sides: only the values are judged).

When a model fails, its message says why: the layer functions its `loss` calls (traced while it
runs) are each checked on a few cases; a failing one is named, else it is a wiring bug of the class,
with the parameters a probe found wrong and their place in the network.
"""
from __future__ import annotations

import dataclasses
import inspect

import numpy as np

from . import course, cs231n
from .cs231n import AdapterError, UserCache, all_finite, describe_value, unpack
from .diagnosis import layer_verdicts, traced_calls, wrong_params

KEEP = 0.75  # dropout: the keep probability (or the strength, in older years) the class is built with
SEED = 231  # dropout_param["seed"]: the class's dropout is then deterministic
SCALE = 0.1  # weight_scale / std: irrelevant (the params are replaced) but passed


@dataclasses.dataclass(frozen=True)
class Model:
    """One class, one configuration: a job."""

    cls: str  # the class's name in the module
    variant: str  # "", "batchnorm", "layernorm", "dropout" (FullyConnectedNet), "rnn", "lstm" (CaptioningRNN)
    test: bool = False  # test mode: loss(X) returns the scores

    @property
    def target(self) -> str:
        return self.cls + (f".{self.variant}" if self.variant else "") + (".test_mode" if self.test else "")

    @classmethod
    def parse(cls, target: str) -> "Model":
        parts = target.split(".")
        test = parts[-1] == "test_mode"
        parts = parts[:-1] if test else parts
        return cls(parts[0], parts[1] if len(parts) > 1 else "", test)


def _network(cls_name: str):
    from properties.catalogue import _models as M

    return {"TwoLayerNet": M.TWO_LAYER_NET, "FullyConnectedNet": M.FULLY_CONNECTED_NET,
            "ThreeLayerConvNet": M.CONV_NET, "CaptioningRNN": M.CAPTIONING_RNN}[cls_name]


CLASSES = ("TwoLayerNet", "FullyConnectedNet", "ThreeLayerConvNet", "CaptioningRNN")


def _signature(fn) -> dict:
    try:
        return dict(inspect.signature(fn).parameters)
    except (TypeError, ValueError):
        return {}


def models_in(module) -> list[Model]:
    """The model classes of a module (defined there or imported), one Model per configuration."""
    out = []
    for name in CLASSES:
        cls = vars(module).get(name)
        if not isinstance(cls, type) or not callable(getattr(cls, "loss", None)):
            continue
        sig = _signature(cls.__init__)
        if name == "CaptioningRNN":
            out += [Model(name, "rnn"), Model(name, "lstm")]
            continue
        variants = [""]
        if name == "FullyConnectedNet":
            variants += ["batchnorm"] if {"normalization", "use_batchnorm"} & set(sig) else []
            variants += ["layernorm"] if "normalization" in sig else []
            variants += ["dropout"] if {"dropout_keep_ratio", "dropout"} & set(sig) else []
        for v in variants:
            out.append(Model(name, v))
            if v != "layernorm":  # layer norm has no test-mode difference
                out.append(Model(name, v, test=True))
    return out


def plan(module, guard) -> list[dict]:
    """Jobs for gradaudit.audit: target, op, name, regimes, forward (for messages), and skip: why a
    configuration cannot be checked (the class has no batch norm parameters yet, other names)."""
    jobs, built = [], {}
    for m in models_in(module):
        key = (m.cls, m.variant)
        if key not in built:
            built[key] = _unbuildable(m, vars(module)[m.cls], guard)
        cls = vars(module)[m.cls]  # (init, loss: its signatures, for the judge when the class stays in a child)
        jobs.append({"target": m.target, "op": _network(m.cls).op, "name": m.target, "regimes": ["typical"],
                     "forward": f"{m.cls}.loss", "skip": built[key], "loss": list(_signature(cls.loss)),
                     "init": [[n, int(p.kind), p.default is not p.empty] for n, p in _signature(cls.__init__).items()]})
    return jobs


def _unbuildable(model: "Model", cls, guard) -> str | None:
    """Why the class, built for this configuration, is not the assignment's network; None if it is, or
    if building it fails otherwise (the check reports that as an error)."""
    try:
        _Instances(model, LocalClass(cls, guard), guard).get(_network(model.cls).geometries[0], np.float64)
    except AdapterError as e:
        return f"{model.target} not checked: {e}"
    except Exception:
        return None
    return None


# ---- constructing the user's class -------------------------------------------------------------

def _constructor_args(model: Model, sig: dict, g: tuple, dtype, reg: float) -> dict:
    from properties.catalogue import _models as M

    if model.cls == "CaptioningRNN":
        _, _, d, wd, h, v = g
        have = {"word_to_idx": M.vocabulary(v), "input_dim": d, "wordvec_dim": wd, "hidden_dim": h,
                "cell_type": model.variant}
    elif model.cls == "ThreeLayerConvNet":
        _, c, h, w, f, fs, hidden, classes, _ = g
        have = {"input_dim": (c, h, w), "num_filters": f, "filter_size": fs, "hidden_dim": hidden,
                "num_classes": classes, "weight_scale": SCALE, "reg": reg}
    else:
        _, d, hidden, c, _ = g
        have = {"input_size": d, "hidden_size": hidden[0], "output_size": c, "std": SCALE,  # assignment 1
                "input_dim": d, "hidden_dim": hidden[0], "hidden_dims": list(hidden), "num_classes": c,
                "weight_scale": SCALE, "reg": reg}
        if model.variant in ("batchnorm", "layernorm"):
            have["normalization"] = model.variant
            have["use_batchnorm"] = model.variant == "batchnorm"
        elif "normalization" in sig:
            have["normalization"] = None
        if model.variant == "dropout":
            have.update(dropout_keep_ratio=KEEP, dropout=KEEP, seed=SEED)
    have["dtype"] = dtype
    args, missing = {}, []
    for name, p in sig.items():
        if name == "self" or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        if name in have:
            args[name] = have[name]
        elif p.default is p.empty:
            missing.append(name)
    if missing:
        raise AdapterError(f"{model.cls}'s constructor takes {', '.join(missing)}, which gradaudit does not know how "
                           f"to fill (it passes {', '.join(sorted(k for k in have if k in sig))})")
    return args


class LocalClass:
    """The user's class in this process (gradaudit.check; the child's plan). Under `gradaudit audit`
    the judge is given a gradaudit._objects.RemoteClass instead: the same four members."""

    def __init__(self, cls, guard):
        self.cls, self.guard = cls, guard
        self.init = _signature(cls.__init__)
        self.loss_takes_reg = "reg" in _signature(cls.loss)  # assignment 1: loss(X, y=None, reg=0.0)

    def new(self, fname: str, args: dict):
        return self.guard.call(self.cls, fname, (), args)

    def traced(self, fn) -> dict:
        return traced_calls(fn)


class _Instances:
    """The user's class, constructed once per (geometry, dtype, reg) and checked against the layout."""

    def __init__(self, model: Model, cls, guard):
        self.model, self.cls, self.guard = model, cls, guard
        self.net = _network(model.cls)
        self.sig, self.loss_takes_reg = cls.init, cls.loss_takes_reg
        self.cache: dict = {}

    def get(self, g: tuple, dtype, reg: float | None = None):
        reg = g[-1] if reg is None and self.model.cls != "CaptioningRNN" else reg
        key = (g, np.dtype(dtype).name, reg)
        if key not in self.cache:
            args = _constructor_args(self.model, self.sig, g, np.dtype(dtype).type, reg or 0.0)
            obj = self.cls.new(f"{self.model.cls}()", args)
            self.check_layout(obj, g)
            if self.model.variant == "dropout" and isinstance(getattr(obj, "dropout_param", None), dict):
                obj.dropout_param.setdefault("seed", SEED)  # a constructor without `seed`: same masks every call
            self.cache[key] = obj
        return self.cache[key]

    def check_layout(self, obj, g) -> None:
        want = self.net.layout(g, self.model.variant)
        have = getattr(obj, "params", None)
        what = f"{self.model.cls}({self.model.variant or ''})".replace("()", "")
        if not isinstance(have, dict):
            raise AdapterError(f"{what}.params is {describe_value(have)}, expected a dict of parameter arrays")
        if set(have) != set(want):
            extra, missing = sorted(set(have) - set(want)), sorted(set(want) - set(have))
            hint = (" (normalisation not implemented?)" if any(n.startswith(("gamma", "beta")) for n in missing)
                    else "")
            raise AdapterError(f"{what}.params has {sorted(have)}, expected the assignment's names {list(want)}"
                               + (f"; missing {missing}" if missing else "") + (f"; extra {extra}" if extra else "")
                               + hint)
        for n, shape in want.items():
            if np.shape(have[n]) != tuple(shape):
                raise AdapterError(f"{what}.params[{n!r}] has shape {list(np.shape(have[n]))}, expected {list(shape)}")

    def loss(self, obj, *args, **kwargs):
        return self.guard.call(obj.loss, f"{self.model.cls}.loss", args, kwargs)


# ---- the targets -------------------------------------------------------------------------------

def _shape_key(shapes, data_shape) -> tuple:
    return tuple(tuple(s) for s in shapes) + (tuple(data_shape),)


def build(name: str, module, guard, notes: dict, cls=None):
    """(spec, target, inputs factory, regimes) of a model job, for gradaudit.audit.build. `cls`: the
    class as the judge uses it, when it does not live in `module` here (gradaudit/_objects.py)."""
    from properties.catalogue import _models as M
    from properties.spec import OpSpec
    from properties.target import Target

    model = Model.parse(name)
    if cls is None:
        cls = vars(module).get(model.cls)
        if not isinstance(cls, type):
            raise AdapterError(f"{model.cls} is not a class in {getattr(module, '__name__', 'the module')}")
        cls = LocalClass(cls, guard)
    net = _network(model.cls)
    instances = _Instances(model, cls, guard)
    data_key = "features" if model.cls == "CaptioningRNN" else "X"
    by_shape = {_shape_key(net.layout(g, model.variant).values(), _data_shape(net, g, model.variant)): g
                for g in net.geometries}
    fname = f"{model.cls}.loss"

    def geometry_of(arrays, data):
        return by_shape[_shape_key((np.shape(a) for a in arrays), np.shape(data))]

    penalty_scale = 1.0
    masks: dict = {}
    if model.variant == "dropout" and not model.test:  # first: a dropout that ignores its seed makes the rest moot
        masks = _dropout_masks(model, net, instances)
    if not model.test and model.cls != "CaptioningRNN":
        penalty_scale, sentence = _reg_convention(model, net, instances)
        notes[name] = sentence

    def call(obj, names, arrays, params):
        obj.params.update(zip(names, arrays))
        data = params[data_key]
        if model.cls == "CaptioningRNN":
            return instances.loss(obj, data, params["captions"])
        if model.test:
            for layer, bn in enumerate(getattr(obj, "bn_params", None) or (), 1):
                if f"running_mean{layer}" in params:
                    bn["running_mean"], bn["running_var"] = params[f"running_mean{layer}"], params[f"running_var{layer}"]
            return instances.loss(obj, data)
        if instances.loss_takes_reg:
            return instances.loss(obj, data, params["y"], reg=params["reg"])
        return instances.loss(obj, data, params["y"])

    def forward(*arrays, **params):
        dtype = arrays[0].dtype
        # the data at the params' precision: the finite differences evaluate the class in float64 at the
        # float32 cell's (float32-exact) point; a layer allocating by x.dtype must not drop to float32
        params = {k: v.astype(dtype, copy=False) if isinstance(v, np.ndarray) and v.dtype.kind == "f" else v
                  for k, v in params.items()}
        g = geometry_of(arrays, params[data_key])
        obj = instances.get(g, dtype)
        names = list(net.layout(g, model.variant))
        if model.test:
            scores = call(obj, names, arrays, params)
            n, c = np.shape(params[data_key])[0], net.layout(g, model.variant)[names[-1]][0]
            if not isinstance(scores, np.ndarray) or scores.shape != (n, c):
                raise AdapterError(f"{fname}(X) returned {describe_value(scores)} in test mode, expected the scores, "
                                   f"an array of shape {[n, c]}")
            return scores, tuple(np.zeros_like(a) for a in arrays)  # the "gradient": see backward
        loss, grads = unpack(fname, call(obj, names, arrays, params), 2, "loss, grads")
        if np.ndim(loss) != 0 or np.asarray(loss).dtype.kind not in "iuf":  # (an object: nothing to judge or save)
            raise AdapterError(f"{fname} returned {describe_value(loss)} as its loss, expected a scalar")
        cache = UserCache(grads, all_finite(*arrays, loss))
        cache.names = names
        return loss, cache

    def backward(dout, cache):
        if model.test:  # no backward in test mode; the frameworks' scores carry a stopped gradient
            return cache
        grads, names = cache.user, cache.names
        if not isinstance(grads, dict):
            raise AdapterError(f"{fname} returned grads = {describe_value(grads)}, expected a dict keyed like params")
        missing = [n for n in names if n not in grads]
        if missing:
            raise AdapterError(f"{fname} returned grads without {', '.join(missing)} (it has {sorted(grads)})")
        out = []
        for n in names:
            g = grads[n]
            out.append(g * dout if isinstance(g, np.ndarray) and g.dtype.kind == "f" else g)
        cs231n.check_finite(fname, out, names, cache, (dout,))
        return tuple(out)

    judge = None
    if model.test:  # the finite differences see a constant, as the frameworks' stopped gradient does
        def judge(*arrays, **params):
            return np.zeros(np.shape(forward(*arrays, **params)[0])), None
    target = Target(name, net.op, forward, backward, judge_forward=judge, forward_name=f"{fname}(X)" if model.test
                    else fname)

    def inputs(regime, breadth, geometries=None):
        def complete(case):
            g = geometry_of(case.arrays.values(), case.params[data_key])
            extra = dict(masks.get(g, {}))
            if not model.test and "reg" in case.params:
                extra["reg_scale"] = penalty_scale
            return dataclasses.replace(case, params={**case.params, **extra}) if extra else case
        return M.cases(net, model.variant, regime, model.test, breadth, geometries).map(complete)

    notes[name] = " ".join(s for s in (_diagnose(model, net, instances, target, inputs, guard), notes.get(name)) if s)
    spec = OpSpec(name=net.op, family="models", source=f"cs231n ({model.cls})", inputs=inputs,
                  regimes=("typical",), kinks=net.kinks, tolerance=net.tolerance)
    return spec, target, inputs, ("typical",)


def _data_shape(net, g, variant):
    if net.op == "captioning_rnn":
        return (g[0], g[2])
    if net.op == "conv_net":
        return tuple(g[:4])
    return (g[0], g[1])


# ---- probes: the regularisation convention, the dropout masks, the diagnosis --------------------

def _probe_case(net, g, variant, rng):
    shapes = net.layout(g, variant)
    arrays = [rng.standard_normal(s) * (0.5 if len(s) > 1 else 0.3) + (1.0 if n.startswith("gamma") else 0.0)
              for n, s in shapes.items()]
    return arrays


def _reg_convention(model, net, instances) -> tuple[float, str]:
    """reg_scale (1: reg·ΣW², 0.5: ½·reg·ΣW²) read from how the class's loss changes with reg."""
    g = next(g for g in net.geometries if g[-1])
    names = list(net.layout(g, model.variant))
    reg = g[-1]
    rng = np.random.default_rng(20)
    arrays = _probe_case(net, g, model.variant, rng)
    n, c = g[0], net.layout(g, model.variant)[names[-1]][0]
    x = rng.standard_normal(_data_shape(net, g, model.variant))
    y = rng.integers(0, c, n)
    penalty = sum(float((a * a).sum()) for nm, a in zip(names, arrays) if net.penalised(nm))
    try:
        losses = []
        for r in (reg, 0.0):
            obj = instances.get(g, np.float64, r)
            obj.params.update(zip(names, (a.copy() for a in arrays)))
            kw = {"reg": r} if instances.loss_takes_reg else {}
            losses.append(float(unpack(f"{model.cls}.loss", instances.loss(obj, x.copy(), y.copy(), **kw), 2,
                                        "loss, grads")[0]))
    except Exception:
        return 1.0, ""  # the check itself calls the loss again and reports what it does
    ratio = (losses[0] - losses[1]) / (reg * penalty)
    return course.reg_convention(f"{model.cls}.loss", ratio, "the weights")


def _dropout_masks(model, net, instances) -> dict:
    """{geometry: {mask<l>: the scaled mask the class's own dropout draws for layer l}}: its
    dropout_forward on ones, with its dropout_param (seeded, so every call draws the same masks)."""
    out = {}
    for g in net.geometries:
        obj = instances.get(g, np.float64)
        param = getattr(obj, "dropout_param", None)
        if not isinstance(param, dict) or not param:
            raise AdapterError(f"{model.cls}(dropout_keep_ratio={KEEP}) has no dropout_param: dropout not implemented?")
        losses = []
        for _ in range(2):
            called = instances.cls.traced(lambda: losses.append(
                unpack(f"{model.cls}.loss", _train_call(model, net, instances, obj, g), 2, "loss, grads")[0]))
        if not np.array_equal(np.asarray(losses[0], float), np.asarray(losses[1], float), equal_nan=True):
            raise AdapterError(f"{model.cls}.loss with dropout gives another loss on every call with the same "
                               f"dropout_param['seed']: seed the generator with it (np.random.seed(seed))")
        drop = called.get("dropout_forward")
        if drop is None:
            raise AdapterError(f"{model.cls}.loss never calls dropout_forward although it was built with dropout")
        masks = {}
        for layer, h in enumerate(g[2], 1):
            res = instances.guard.call(drop, "dropout_forward", (np.ones((g[0], h)), dict(param, mode="train")))
            masks[f"mask{layer}"] = np.asarray(unpack("dropout_forward", res, 2, "out, cache")[0], np.float64)
        out[g] = masks
    return out


def _train_call(model, net, instances, obj, g, seed=5):
    rng = np.random.default_rng(seed)
    names = list(net.layout(g, model.variant))
    obj.params.update(zip(names, _probe_case(net, g, model.variant, rng)))
    data = rng.standard_normal(_data_shape(net, g, model.variant))
    if model.cls == "CaptioningRNN":
        return instances.loss(obj, data, rng.integers(0, g[5], (g[0], g[1] + 1)))
    c = net.layout(g, model.variant)[names[-1]][0]
    return instances.loss(obj, data, rng.integers(0, c, g[0]))


def _diagnose(model, net, instances, target, inputs, guard) -> str:
    """What a failure of this model means: a layer it calls that fails on its own, or its wiring."""
    oracle = course.first_oracle()
    if oracle is None:
        return ""
    g = net.geometries[0]
    try:
        called = instances.cls.traced(lambda: _train_call(model, net, instances, instances.get(g, np.float64), g))
    except Exception:
        return ""  # the check reports what the class does
    layers = layer_verdicts(called, guard, oracle)
    bad = [(t, why) for t, (ok, why) in layers.items() if not ok]
    fname = f"{model.cls}.loss"
    if bad:
        first, why = bad[0]
        return (f"{fname} calls {', '.join(t for t, _ in bad)}, which fail{'s' if len(bad) == 1 else ''} on "
                f"{'its' if len(bad) == 1 else 'their'} own ({why}): the model inherits the bug — see "
                f"{first}'s own verdict.")
    if model.test:
        modes = {"batchnorm": " (does loss(X) put every batch norm layer in test mode: bn_param['mode'] = "
                              "'test'?)",
                 "dropout": " (does loss(X) turn dropout off: dropout_param['mode'] = 'test'?)"}
        where = f"{fname}(X) in test mode{modes.get(model.variant, '')}"
        if not layers:
            return f"{fname} calls none of the assignment's layer functions, so the bug is in {where}."
        return f"Every layer function {fname} calls passes its own check ({', '.join(sorted(layers))}): the bug " \
               f"is in {where}."
    wrong = wrong_params(target, inputs, oracle, net.geometries[1:2])
    where = ""
    if wrong:
        where = (f"; on a probe, {', '.join(f'grad[{n}] ({net.role(n)})' for n in wrong)} "
                 f"disagree{'s' if len(wrong) == 1 else ''} with {oracle}")
    if not layers:
        return f"{fname} calls none of the assignment's layer functions, so the bug is in {fname} itself{where}."
    return (f"Every layer function {fname} calls passes its own check ({', '.join(sorted(layers))}): a wiring "
            f"bug in {fname}{where}.")
