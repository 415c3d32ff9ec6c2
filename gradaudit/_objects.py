"""The cs231n model classes under `gradaudit audit`: their objects stay in the audit child.

gradaudit/models.py builds a class, fills its `params` (and its batch norm running averages, its
dropout seed) and calls its `loss`; here, for the judge, the class is a `RemoteClass` whose objects
are `RemoteModel`s: a handle to the object the child built and keeps, and a mirror of the state the
judge reads and sets (`params`, `bn_params`, `dropout_param`). Each call of `loss` sends the mirror,
the child sets it on its object, calls `loss` (tracing the layer functions it calls, which stay in
the child too: `KeptFunction`) and sends the state back. Everything the child sends is the audited
code's word: a state in another form is an error on the class, never an exception of the judge.
"""
from __future__ import annotations

import inspect

import numpy as np

from ._guard import UserCodeError, clean
from ._remote import Child, Handle, RemoteFunction


# ---- in the child ---------------------------------------------------------------------------------

def model_state(obj) -> dict:
    """What the judge reads of a model object."""
    return {"params": getattr(obj, "params", None), "bn_params": getattr(obj, "bn_params", None),
            "dropout_param": getattr(obj, "dropout_param", None)}


def set_model_state(obj, state: dict) -> None:
    """Set what the judge wrote into its mirror: the params it fills, the running averages and the
    modes of batch norm, the dropout seed (dicts updated in place, as the class's loss reads them)."""
    if isinstance(state.get("params"), dict):
        obj.params.update(state["params"])
    bn, sent = getattr(obj, "bn_params", None), state.get("bn_params")
    if isinstance(bn, list) and isinstance(sent, list):
        for mine, theirs in zip(bn, sent):
            if isinstance(mine, dict) and isinstance(theirs, dict):
                mine.update(theirs)
    dp = getattr(obj, "dropout_param", None)
    if isinstance(dp, dict) and isinstance(state.get("dropout_param"), dict):
        dp.update(state["dropout_param"])


# ---- in the judge -----------------------------------------------------------------------------------

class Unguarded:
    """The guard gradaudit/models.py is given when the class lives in the child: calls into the child
    raise UserCodeError themselves, and a lost child (ChildLost) must end the target, not be excused."""

    def call(self, fn, fname, args=(), kwargs=None):
        return fn(*args, **(kwargs or {}))

    def wrap(self, fn, fname):
        return fn


class KeptFunction(RemoteFunction):
    """A function the child traced a model's loss calling (a layer), kept there and called by handle."""

    def __init__(self, child: Child, handle: Handle, label: str):
        super().__init__(child, "", "", label=label, keeps_cache=label.endswith("_forward"))
        self.ref = handle


def _parameters(raw, what: str) -> dict:
    """The constructor's parameters as the child described them: [name, kind, has a default]."""
    if type(raw) is not list or len(raw) > 256:
        raise UserCodeError(f"{what}: the audit child described its constructor in an unknown form")
    out = {}
    for item in raw:
        if type(item) is not list or len(item) != 3 or not isinstance(item[0], str) or not item[0].isidentifier() \
                or type(item[1]) is not int or not 0 <= item[1] <= 4 or type(item[2]) is not bool:
            raise UserCodeError(f"{what}: constructor parameter {clean(repr(item), 80)} in an unknown form")
        out[item[0]] = inspect.Parameter(item[0], type(inspect.Parameter.POSITIONAL_ONLY)(item[1]),
                                         default=None if item[2] else inspect.Parameter.empty)
    return out


class RemoteClass:
    """A model class of a source the child imported, as gradaudit/models.py uses a class (`LocalClass`)."""

    def __init__(self, child: Child, key: str, name: str, desc: dict, kept: list):
        self.child, self.key, self.name, self.kept = child, key, name, kept
        self.init = _parameters(desc.get("init"), name)
        loss = desc.get("loss")
        self.loss_takes_reg = type(loss) is list and "reg" in loss
        self.tracing: dict | None = None

    def new(self, fname: str, args: dict) -> "RemoteModel":
        if "dtype" in args:  # a NumPy type: it crosses as its name
            args = {**args, "dtype": np.dtype(args["dtype"]).name}
        reply = self.child.model(None, None, False, (), args, fname=fname, new=[self.key, self.name])
        handle = reply.get("value") if type(reply) is dict else None
        if not isinstance(handle, Handle):
            raise UserCodeError(f"{fname}: the audit child answered in an unknown form")
        obj = RemoteModel(self, handle)
        obj.sync(reply, fname, first=True)
        return obj

    def traced(self, fn) -> dict:
        """The layer functions the model's loss called during fn(), by name (KeptFunctions)."""
        self.tracing = {}
        try:
            fn()
        finally:
            seen, self.tracing = self.tracing, None
        return seen


class RemoteModel:
    """A model object kept in the child, with a mirror of its params, bn_params and dropout_param."""

    def __init__(self, cls: RemoteClass, handle: Handle):
        self.cls, self.handle = cls, handle
        self.params = self.bn_params = self.dropout_param = None

    def loss(self, *args, **kwargs):
        cls, fname = self.cls, f"{self.cls.name}.loss"
        state = {"params": self.params, "bn_params": self.bn_params, "dropout_param": self.dropout_param}
        reply = cls.child.model(self.handle, state, True, args, kwargs, fname=fname, trace=cls.tracing is not None)
        return self.sync(reply, fname)

    def sync(self, reply, fname: str, first: bool = False):
        """Take the state the child sent; the value its loss returned."""
        if type(reply) is not dict or set(reply) != {"value", "state", "called"} or type(reply["state"]) is not dict \
                or type(reply["called"]) is not dict:
            raise UserCodeError(f"{fname}: the audit child answered in an unknown form")
        state = reply["state"]
        params, bn = state.get("params"), state.get("bn_params")
        if not first and type(params) is not dict:  # (at first, the layout check names what it is)
            raise UserCodeError(f"{fname} left params as {clean(type(params).__name__, 60)}, expected a dict")
        if bn is not None and (type(bn) is not list or any(type(b) is not dict for b in bn)):
            raise UserCodeError(f"{fname}: bn_params is {clean(type(bn).__name__, 60)}, expected a list of dicts")
        self.params, self.bn_params, self.dropout_param = params, bn, state.get("dropout_param")
        if self.cls.tracing is not None:
            for name, h in reply["called"].items():
                if isinstance(name, str) and name.isidentifier() and len(name) < 80 and isinstance(h, Handle) \
                        and name not in self.cls.tracing:
                    self.cls.tracing[name] = KeptFunction(self.cls.child, h, name)
                    self.cls.kept.append(self.cls.tracing[name])  # alive for the audit: its id names it
        return reply["value"]
