"""A checkpoint's tensors and fields read without PyTorch (to check an ONNX graph's weights
against them): the zip of ``torch.save`` holds a pickle whose tensors point at raw storages in
the zip; an unpickler that knows only plain containers and tensors reads it, and anything else
(anything that could run code) stops it."""

from __future__ import annotations

import collections
import io
import pickle
import zipfile
from dataclasses import dataclass
from typing import Any

import numpy as np

_STORAGES = {
    "HalfStorage": "<f2",
    "FloatStorage": "<f4",
    "DoubleStorage": "<f8",
    "LongStorage": "<i8",
    "IntStorage": "<i4",
    "ShortStorage": "<i2",
    "CharStorage": "i1",
    "ByteStorage": "u1",
    "BoolStorage": "?",
}


@dataclass
class _TensorRef:
    """A tensor of a checkpoint, not read yet: its storage in the zip and its layout."""

    dtype: str
    key: str
    offset: int
    size: tuple[int, ...]
    stride: tuple[int, ...]


class _StorageType:
    def __init__(self, dtype: str) -> None:
        self.dtype = dtype


def _rebuild_tensor(storage: Any, offset: int, size: Any, stride: Any, *_: Any) -> _TensorRef:
    dtype, key = storage
    return _TensorRef(dtype, str(key), int(offset), tuple(size), tuple(stride))


class _TensorRefUnpickler(pickle.Unpickler):
    """Unpickles a checkpoint into plain containers and :class:`_TensorRef`; any other class
    (anything that could run code) stops it."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor
        if (module, name) == ("torch._utils", "_rebuild_parameter"):
            return lambda data, *_: data
        if module == "torch" and name in _STORAGES:
            return _StorageType(_STORAGES[name])
        raise pickle.UnpicklingError(f"{module}.{name} is not read without PyTorch")

    def persistent_load(self, pid: Any) -> Any:
        _, storage_type, key, *_ = pid
        if not isinstance(storage_type, _StorageType):
            raise pickle.UnpicklingError(f"storage of type {storage_type!r}")
        return storage_type.dtype, key


def checkpoint_tensors(data: bytes, chosen: list[int]) -> list[dict[str, Any]] | None:
    """The state dicts of networks ``chosen`` (0-based) of a checkpoint's bytes, as functions of
    no argument that read one tensor as a float32 array; None when they cannot be read so."""
    try:
        z = zipfile.ZipFile(io.BytesIO(data))
        pkl = next(n for n in z.namelist() if n.endswith("/data.pkl"))
        prefix = pkl[: -len("data.pkl")]
        names = set(z.namelist())
        order = z.read(prefix + "byteorder").strip() if prefix + "byteorder" in names else b""
        if order not in (b"little", b""):
            return None  # the dtypes below are little-endian
        state = _TensorRefUnpickler(io.BytesIO(z.read(pkl))).load()
        nets = [state["nets"][i] for i in chosen]
    except Exception:
        return None

    def reader(ref: _TensorRef) -> Any:
        def read() -> np.ndarray:
            raw = np.frombuffer(z.read(f"{prefix}data/{ref.key}"), dtype=ref.dtype)
            item = raw.dtype.itemsize
            arr = np.lib.stride_tricks.as_strided(
                raw[ref.offset :], ref.size, tuple(st * item for st in ref.stride)
            )
            return np.asarray(arr, np.float32)

        return read

    out = []
    for sd in nets:
        if not isinstance(sd, dict):
            return None
        out.append({k: reader(v) for k, v in sd.items() if isinstance(v, _TensorRef)})
    return out


def checkpoint_field(data: bytes, key: str) -> Any:
    """One top-level entry of a checkpoint's bytes, read without PyTorch (None if absent)."""
    try:
        z = zipfile.ZipFile(io.BytesIO(data))
        pkl = next(n for n in z.namelist() if n.endswith("/data.pkl"))
        state = _TensorRefUnpickler(io.BytesIO(z.read(pkl))).load()
    except Exception:
        return None
    return state.get(key) if isinstance(state, dict) else None
