"""The wire between `gradaudit audit` and its child: length-prefixed frames on a pipe of their own.

A frame is a fixed header — magic, the run's 16-byte random token, the length of a JSON part and of
a binary part — then the JSON (what the message says) and the binary part (the arrays' raw bytes,
each 16-byte aligned, referred to from the JSON by offset, length, dtype and shape). Values cross as
a tagged tree: JSON scalars as themselves, and one-key objects for everything else, so a user's
dict can never be mistaken for a tag:

    {"L": [...]} list   {"T": [...]} tuple   {"D": [[key, value], ...]} dict
    {"A": [offset, nbytes, dtype, shape, writeable, ref]} ndarray (dtype: NumPy's `str`, or "bfloat16")   {"S": [offset, nbytes, dtype]} NumPy scalar
    {"H": [id, type name]} an object that stays in the child (a cache): a handle
    {"C": [arrays, params]} a properties.spec.Case

Reading is strict: a wrong magic or token, a length over the limits, JSON that does not parse, an
unknown tag, a dtype that is not a plain number, bytes that do not match the shape: `ProtocolError`.
The reader never trusts the child; the child trusts the parent (it is the parent's own data).
"""
from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import select
import struct
import time

import numpy as np

MAGIC = b"GAF1"
HEADER = struct.Struct("<4s16sIQ")  # magic, token, JSON length, binary length
TOKEN_BYTES = 16
MAX_META = 64 << 20  # bytes of JSON in one frame
MAX_DATA = 4 << 30  # bytes of arrays in one frame
MAX_DEPTH = 64  # nesting of a value tree
ALIGN = 16
BF16 = "bfloat16"  # the one dtype that is not NumPy's own (kind "V"): crosses by its name


class ProtocolError(Exception):
    """A frame that breaks the protocol: malformed, unexpected, or from someone without the token."""


class PeerGone(Exception):
    """The other end closed its pipe (exited, crashed, was killed)."""


class FrameTimeout(Exception):
    """No complete frame within the deadline."""


# ---- frames -----------------------------------------------------------------------------------

# one encoder for every frame (json.dumps with other than its defaults builds one per call); the values
# are trees of JSON scalars, lists and dicts the encoder itself built: no cycles to look for
_JSON = json.JSONEncoder(separators=(",", ":"), allow_nan=True, check_circular=False).encode


def pack(token: bytes, meta: dict, data: bytes = b"") -> bytes:
    body = _JSON(meta).encode("utf-8", "surrogatepass")
    if len(body) > MAX_META or len(data) > MAX_DATA:
        raise ProtocolError(f"frame too large ({len(body)} bytes of JSON, {len(data)} of arrays)")
    return HEADER.pack(MAGIC, token, len(body), len(data)) + body + data


def digest(parts: list, data) -> str:
    """What identifies a request: the JSON of its parts (the values' nodes: offsets, dtypes, shapes,
    refs) and its arrays' bytes. A reply the audit child computed ahead names the request it answers
    so (gradaudit/_ahead.py), and the judge compares it with its own request's."""
    h = hashlib.blake2b(_JSON(parts).encode("utf-8", "surrogatepass"), digest_size=16)
    h.update(data)
    return h.hexdigest()


def write_frame(fd: int, token: bytes, meta: dict, data: bytes = b"") -> None:
    view = memoryview(pack(token, meta, data))
    while view:
        n = os.write(fd, view)
        view = view[n:]


class FrameReader:
    """Frames from one pipe, read in large chunks (one read() usually brings a whole frame). With a
    deadline the descriptor is non-blocking and select() waits only when nothing is there yet."""

    def __init__(self, fd: int, token: bytes, *, nonblocking: bool = False):
        self.fd, self.token, self.buf = fd, token, bytearray()
        if nonblocking:
            os.set_blocking(fd, False)

    def _fill(self, need: int, deadline: float | None) -> None:
        while len(self.buf) < need:
            if deadline is not None:  # wait until readable (no EAGAIN raised and caught per frame)
                if not select.select([self.fd], [], [], max(deadline - time.monotonic(), 0.0))[0]:
                    raise FrameTimeout()
            try:
                chunk = os.read(self.fd, max(need - len(self.buf), 1 << 16))
            except BlockingIOError:  # (a non-blocking pipe read without a deadline)
                select.select([self.fd], [], [])
                continue
            if not chunk:
                raise PeerGone()
            self.buf += chunk

    def read(self, deadline: float | None = None) -> tuple[dict, bytearray]:
        """(meta, data) of the next frame; FrameTimeout past `deadline` (time.monotonic), PeerGone at
        EOF, ProtocolError for anything that is not a frame of this run."""
        self._fill(HEADER.size, deadline)
        magic, tok, n_meta, n_data = HEADER.unpack_from(self.buf)
        if magic != MAGIC:
            raise ProtocolError(f"not a frame (starts with {bytes(magic)!r})")
        if tok != self.token:
            raise ProtocolError("a frame without this run's token")
        if n_meta > MAX_META or n_data > MAX_DATA:
            raise ProtocolError(f"frame too large ({n_meta} bytes of JSON, {n_data} of arrays)")
        end = HEADER.size + n_meta + n_data
        self._fill(end, deadline)
        body = bytes(self.buf[HEADER.size:HEADER.size + n_meta])
        data = self.buf[HEADER.size + n_meta:end]
        del self.buf[:end]
        try:
            meta = json.loads(body.decode("utf-8", "surrogatepass"))
        except (ValueError, RecursionError) as e:
            raise ProtocolError(f"frame JSON does not parse: {type(e).__name__}") from None
        if not isinstance(meta, dict) or not isinstance(meta.get("kind"), str):
            raise ProtocolError("frame JSON is not an object with a `kind`")
        return meta, data

    def pending(self) -> bool:
        """Is there more right now (an extra frame nobody asked for; EOF does not count)?"""
        if self.buf:
            return True
        if not select.select([self.fd], [], [], 0)[0]:
            return False
        try:
            chunk = os.read(self.fd, 1 << 16)
        except BlockingIOError:
            return False
        self.buf += chunk
        return bool(chunk)


# ---- values -----------------------------------------------------------------------------------

def stacked(calls: list) -> list | None:
    """The (args, kwargs) of many calls as one array per positional argument, the calls' arrays stacked
    along a new first axis (a `call_many` request sends that, and the kwargs once), when every call
    has the same kwargs and arrays of one shape and dtype in each position; else None."""
    if not calls or not calls[0][0] or any(k is not calls[0][1] for _, k in calls):
        return None
    like = [(a.shape, a.dtype) if type(a) is np.ndarray else None for a in calls[0][0]]
    if None in like or any(len(args) != len(like) or any(type(a) is not np.ndarray or (a.shape, a.dtype) != s
                                                          for a, s in zip(args, like)) for args, _ in calls):
        return None
    return [np.stack([args[i] for args, _ in calls]) for i in range(len(like))]


class Encoder:
    """Builds one frame's binary part. `opaque(obj)` turns what cannot cross into a handle node (the
    child keeps such objects); `ref(array)` gives the parent's id of an array it sends (for in-place
    writes coming back); `handle_id(obj)` the child's id of a handle the parent passes back (or None)."""

    def __init__(self, opaque=None, ref=None, handle_id=None):
        self.parts: list[bytes] = []
        self.size = 0
        self.opaque, self.ref, self.handle_id = opaque, ref, handle_id

    def data(self) -> bytes:
        return b"".join(self.parts)

    def _put(self, raw: bytes) -> int:
        pad = -self.size % ALIGN
        if pad:
            self.parts.append(b"\0" * pad)
            self.size += pad
        off = self.size
        self.parts.append(raw)
        self.size += len(raw)
        return off

    def value(self, v, depth: int = 0):
        if depth > MAX_DEPTH:
            raise ValueError(f"a value nested deeper than {MAX_DEPTH} levels")
        if v is None or isinstance(v, (bool, str)):
            return v
        if isinstance(v, (int, float)) and type(v) in (int, float):
            return v
        if isinstance(v, np.ndarray) and (dt := _wire_dtype(v.dtype)) is not None:
            a = v if v.flags.c_contiguous else v.copy(order="C")  # (ascontiguousarray makes 0-d arrays 1-d)
            raw = a.tobytes()
            ref = self.ref(v) if self.ref is not None else None
            return {"A": [self._put(raw), len(raw), dt, list(a.shape), bool(v.flags.writeable), ref]}
        if isinstance(v, np.generic) and np.dtype(type(v)).kind in "biufc":
            raw = np.asarray(v).tobytes()
            return {"S": [self._put(raw), len(raw), np.asarray(v).dtype.str]}
        if isinstance(v, tuple):
            return {"T": [self.value(x, depth + 1) for x in v]}
        if isinstance(v, list):
            return {"L": [self.value(x, depth + 1) for x in v]}
        if isinstance(v, dict):
            return {"D": [[self.value(k, depth + 1), self.value(x, depth + 1)] for k, x in v.items()]}
        handle = self.handle_id(v) if self.handle_id is not None else None
        if handle is not None:
            return {"H": [handle, ""]}
        if type(v).__name__ == "Case" and type(v).__module__ == "properties.spec":
            return {"C": [self.value(v.arrays, depth + 1), self.value(v.params, depth + 1)]}
        if self.opaque is None:
            raise TypeError(f"cannot send a {type(v).__name__}")
        return {"H": [self.opaque(v), _type_name(v)]}


@functools.lru_cache(maxsize=64)
def _wire_dtype(dt: np.dtype) -> str | None:
    """How an array's dtype crosses (NumPy's `str`, or "bfloat16"); None: it cannot. (dtype.name
    builds a string each time: the encoder asks once per dtype.)"""
    if dt.name == BF16:
        return BF16
    return dt.str if dt.kind in "biufc" and not dt.hasobject else None


def _type_name(v) -> str:
    try:
        name = type(v).__name__
    except Exception:
        name = "object"
    return name if isinstance(name, str) else "object"


_NUMERIC = set("biufc")


@functools.lru_cache(maxsize=64)
def _dtype(text) -> np.dtype:
    if not isinstance(text, str) or len(text) > 8:
        raise ProtocolError(f"bad dtype {text!r}")
    if text == BF16:  # a gradaudit.function subject's low precision (ml_dtypes, as torch and JAX use it)
        import ml_dtypes

        return np.dtype(ml_dtypes.bfloat16)
    try:
        dt = np.dtype(text)
    except TypeError:
        raise ProtocolError(f"bad dtype {text!r}") from None
    if dt.kind not in _NUMERIC or dt.hasobject or dt.fields is not None or dt.subdtype is not None:
        raise ProtocolError(f"dtype {text!r} is not a plain number")
    return dt


def _int(v, what: str, limit: int) -> int:
    if type(v) is not int or not 0 <= v <= limit:
        raise ProtocolError(f"bad {what} {v!r}")
    return v


_JSON_SCALARS = frozenset((type(None), bool, int, float, str))


class Decoder:
    """Rebuilds a value tree from (node, data). `handle(id, type name)` resolves a handle node;
    `array(a, ref)` is told about every array decoded (the child tracks the parent's arrays)."""

    def __init__(self, data: bytearray, handle, array=None, case=None):
        self.data, self.handle, self.array, self.case = data, handle, array, case

    def _span(self, off, n):
        off, n = _int(off, "offset", len(self.data)), _int(n, "length", len(self.data))
        if off + n > len(self.data):
            raise ProtocolError("an array beyond the frame's data")
        return off, n

    def value(self, node, depth: int = 0):
        if type(node) in _JSON_SCALARS and depth <= MAX_DEPTH:  # (the commonest node: first)
            return node
        if depth > MAX_DEPTH:
            raise ProtocolError(f"a value nested deeper than {MAX_DEPTH} levels")
        if type(node) is not dict or len(node) != 1:
            raise ProtocolError(f"not a value node: {type(node).__name__}")
        (tag, body), = node.items()
        if tag in ("L", "T"):
            if type(body) is not list:
                raise ProtocolError(f"bad {tag} node")
            items = [self.value(x, depth + 1) for x in body]
            return items if tag == "L" else tuple(items)
        if tag == "D":
            if type(body) is not list or any(type(kv) is not list or len(kv) != 2 for kv in body):
                raise ProtocolError("bad D node")
            out = {}
            for k, x in body:
                key = k if type(k) is str else self.value(k, depth + 1)
                try:
                    out[key] = self.value(x, depth + 1)
                except TypeError:  # an unhashable key
                    raise ProtocolError("an unhashable dict key") from None
            return out
        if tag == "A":
            if type(body) is not list or len(body) != 6 or type(body[3]) is not list:
                raise ProtocolError("bad A node")
            off, n = self._span(body[0], body[1])
            dt = _dtype(body[2])
            shape = tuple(_int(s, "dimension", 1 << 40) for s in body[3])
            if len(shape) > 32 or math.prod(shape) * dt.itemsize != n:
                raise ProtocolError(f"{n} bytes do not make an array {dt}{list(shape)}")
            a = np.frombuffer(self.data, dtype=dt, count=n // dt.itemsize if dt.itemsize else 0,
                              offset=off).reshape(shape) if n else np.zeros(shape, dt)
            if body[4] is not True:
                a.flags.writeable = False
            if self.array is not None:
                self.array(a, body[5])
            return a
        if tag == "S":
            if type(body) is not list or len(body) != 3:
                raise ProtocolError("bad S node")
            off, n = self._span(body[0], body[1])
            dt = _dtype(body[2])
            if n != dt.itemsize:
                raise ProtocolError("bad scalar length")
            return np.frombuffer(self.data, dtype=dt, count=1, offset=off)[0]
        if tag == "H":
            if type(body) is not list or len(body) != 2 or type(body[1]) is not str:
                raise ProtocolError("bad H node")
            return self.handle(_int(body[0], "handle", 1 << 62), body[1][:80])
        if tag == "C":
            if self.case is None or type(body) is not list or len(body) != 2:
                raise ProtocolError("bad C node")
            arrays, params = self.value(body[0], depth + 1), self.value(body[1], depth + 1)
            if type(arrays) is not dict or type(params) is not dict:
                raise ProtocolError("bad C node")
            return self.case(arrays, params)
        raise ProtocolError(f"unknown tag {tag!r}")
