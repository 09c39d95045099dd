"""The crossing tensor on the wire: compression (fp32 / fp16 / int8) and a small binary format (not pickle).

Format `ETW1` (all integers little-endian):

    magic  b"ETW1"          4 bytes
    count  uint16           number of tensors
    per tensor:
      name_len uint16, name (UTF-8, name_len bytes)
      dtype    uint8        1 = float32, 2 = float16, 3 = int8 (affine), 4 = int64
      ndim     uint8, dims  ndim x uint32
      scale    float32, zero_point int32      (int8 only: x ~ (q - zero_point) * scale)
      nbytes   uint64, data (row-major, little-endian, exactly prod(dims) x itemsize bytes)

`decode` refuses anything that does not parse exactly — wrong magic, a size that does not match
its dims, trailing bytes — with a `WireError`, so a device never acts on a garbled answer.
Stdlib + numpy only: both the device and the server import it.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from export.errors import ExportError

__all__ = ["Crossing", "WireError", "calibrate", "decode", "encode"]

MAGIC = b"ETW1"
_CODES = {1: np.dtype("<f4"), 2: np.dtype("<f2"), 3: np.dtype("i1"), 4: np.dtype("<i8")}
_DTYPES = {"fp32": 1, "fp16": 2, "int8": 3}
MAX_TENSORS = 64
MAX_BYTES = 1 << 30


class WireError(ExportError):
    """A payload that does not parse as ETW1, or a server answer that is not one."""


@dataclass(frozen=True)
class Crossing:
    """How one tensor travels: `dtype` (fp32, fp16, int8) and, for int8, its affine scale and zero point."""

    name: str
    dtype: str = "fp32"
    scale: float = 1.0
    zero_point: int = 0

    def to_dict(self) -> dict[str, object]:
        return {"name": self.name, "dtype": self.dtype, "scale": self.scale, "zero_point": self.zero_point}


def calibrate(name: str, samples: np.ndarray, dtype: str = "int8") -> Crossing:
    """Scale and zero point covering the observed range of `samples` (min/max, like onnxruntime's MinMax).

    >>> c = calibrate("h", np.array([0.0, 2.55]))
    >>> round(c.scale, 4), c.zero_point
    (0.01, -128)
    """
    if dtype != "int8":
        return Crossing(name, dtype)
    low, high = min(float(np.min(samples)), 0.0), max(float(np.max(samples)), 0.0)  # 0 stays exact
    scale = (high - low) / 255.0 or 1.0
    return Crossing(name, "int8", scale, int(np.clip(round(-128 - low / scale), -128, 127)))


def encode(tensors: Mapping[str, np.ndarray], crossings: Mapping[str, Crossing] | None = None) -> bytes:
    """Serialize tensors, compressing each as its `Crossing` says (fp32 when not listed).

    >>> payload = encode({"h": np.array([[0.0, 1.0, 2.5]], np.float32)}, {"h": Crossing("h", "int8", 0.01, -128)})
    >>> len(payload), decode(payload)["h"].round(2).tolist()
    (38, [[0.0, 1.0, 2.5]])
    """
    crossings = crossings or {}
    if len(tensors) > MAX_TENSORS:
        raise WireError(f"{len(tensors)} tensors in one message, at most {MAX_TENSORS}", fix="send fewer tensors")
    parts = [MAGIC, struct.pack("<H", len(tensors))]
    for name, value in tensors.items():
        arr = np.asarray(value)
        c = crossings.get(name, Crossing(name))
        if arr.dtype.kind == "i" and arr.dtype.itemsize == 8:
            code, data, qp = 4, arr.astype("<i8"), b""
        elif c.dtype == "int8":
            q = np.clip(np.rint(arr / c.scale) + c.zero_point, -128, 127).astype(np.int8)
            code, data, qp = 3, q, struct.pack("<fi", c.scale, c.zero_point)
        else:
            code = _DTYPES[c.dtype]
            data, qp = arr.astype(_CODES[code]), b""
        raw = np.ascontiguousarray(data).tobytes()
        key = name.encode("utf-8")
        parts += [struct.pack("<H", len(key)), key, struct.pack("<BB", code, arr.ndim),
                  struct.pack(f"<{arr.ndim}I", *arr.shape), qp, struct.pack("<Q", len(raw)), raw]
    return b"".join(parts)


def decode(payload: bytes) -> dict[str, np.ndarray]:
    """Parse an ETW1 payload back to float32 (int8 and fp16 are dequantized / widened) or int64 arrays.

    >>> decode(b"garbage")
    Traceback (most recent call last):
    ...
    export.wire.WireError: payload is not an ETW1 message (starts with b'garb'). Fix: send tensors encoded with export.wire.encode; if this came from a server, it is not an edgetier serving tier.
    """
    view = memoryview(payload)
    if bytes(view[:4]) != MAGIC:
        raise WireError(f"payload is not an ETW1 message (starts with {bytes(view[:4])!r})",
                        fix="send tensors encoded with export.wire.encode; if this came from a server, it is not an "
                            "edgetier serving tier")
    pos = 4

    def take(n: int) -> memoryview:
        nonlocal pos
        if n < 0 or pos + n > len(view):
            raise WireError(f"ETW1 payload truncated at byte {pos} (needs {n} more, has {len(view) - pos})",
                            fix="resend the whole message")
        chunk = view[pos:pos + n]
        pos += n
        return chunk

    (count,) = struct.unpack("<H", take(2))
    if count > MAX_TENSORS:
        raise WireError(f"ETW1 payload claims {count} tensors, at most {MAX_TENSORS}", fix="resend the message")
    out: dict[str, np.ndarray] = {}
    for _ in range(count):
        (n,) = struct.unpack("<H", take(2))
        try:
            name = bytes(take(n)).decode("utf-8")
        except UnicodeDecodeError:
            raise WireError("ETW1 tensor name is not UTF-8", fix="resend the message") from None
        code, ndim = struct.unpack("<BB", take(2))
        if code not in _CODES:
            raise WireError(f"ETW1 tensor {name!r} has unknown dtype code {code}", fix="resend the message")
        dims = struct.unpack(f"<{ndim}I", take(4 * ndim))
        scale, zp = struct.unpack("<fi", take(8)) if code == 3 else (1.0, 0)
        (nbytes,) = struct.unpack("<Q", take(8))
        expected = int(np.prod(dims, dtype=np.int64)) * _CODES[code].itemsize
        if nbytes != expected or nbytes > MAX_BYTES:
            raise WireError(f"ETW1 tensor {name!r}: {nbytes} data bytes for shape {list(dims)} "
                            f"({expected} expected)", fix="resend the message")
        arr = np.frombuffer(take(nbytes), dtype=_CODES[code]).reshape(dims)
        if code == 3:
            out[name] = ((arr.astype(np.float32) - np.float32(zp)) * np.float32(scale)).astype(np.float32)
        elif code == 4:
            out[name] = arr.astype(np.int64)
        else:
            out[name] = arr.astype(np.float32)
    if pos != len(view):
        raise WireError(f"ETW1 payload has {len(view) - pos} trailing bytes", fix="resend the message")
    return out
