"""Inference backends behind one call: ONNX Runtime on the CPU, PyTorch on CUDA, MPS or the CPU.

A backend is a callable from a batch of normalised images, float32 (N, 3, H, W), to class
probabilities, float32 (N, K, H, W) (the mean of the chosen networks' softmax). The sliding-window
engine in :mod:`cloudcps.predict` does everything else (reading, the stretch, blending, writing)
the same way for both, so the two backends differ only in how the networks run.

The ONNX graph of a checkpoint is exported once (this needs PyTorch) and cached under
``$CLOUDCPS_CACHE`` (default ``$XDG_CACHE_HOME/cloudcps`` or ``~/.cache/cloudcps``), keyed by the
checkpoint's SHA-256 and the networks chosen. A graph is used only when it provably comes from
the checkpoint: the checkpoint's bytes are read and hashed once and the graph is exported from
those same bytes; a cached graph must match the record written beside it at export (the SHA-256
of the graph file and of its checkpoint), and a graph that ships beside a checkpoint
(``starter.onnx`` beside ``starter.pt``) must be named by the checkpoint itself (its
``onnx_sha256``, recorded by :func:`vouch_for_graph` when it was packaged; the checkpoint's bytes
are what was hashed) and hold the checkpoint's weights where it keeps their names (compared
with the checkpoint's tensors, read without PyTorch); any other graph is ignored and
re-exported. The graph carries the
checkpoint's data contract in its metadata, so prediction with a cached graph never imports
PyTorch: start-up takes a fraction of a second and the process stays small.
"""

from __future__ import annotations

import atexit
import collections
import hashlib
import io
import json
import logging
import os
import pickle
import platform
import shutil
import sys
import tempfile
import uuid
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from cloudcps import __version__
from cloudcps.contract import DataContract
from cloudcps.errors import InputError, first_line

if TYPE_CHECKING:
    import torch

    from cloudcps.models import LoadedModel

log = logging.getLogger(__name__)

BACKENDS = ("auto", "onnx", "torch")
GRAPH_VERSION = 1  # bump when the exported graph's inputs, outputs or metadata change
OPSET = 17
# where model files are found lives in cloudcps.modelfiles (re-exported here, where it was)
from cloudcps.modelfiles import (  # noqa: E402, F401
    DEFAULT_MODEL,
    DEFAULT_MODEL_FILE,
    default_model_path,
    resolve_checkpoint,
)


def bytes_sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def cache_dir() -> Path:
    """Where exported graphs are kept (``$CLOUDCPS_CACHE``, else the XDG cache folder)."""
    if os.environ.get("CLOUDCPS_CACHE"):
        return Path(os.environ["CLOUDCPS_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "cloudcps"


# --------------------------------------------------------------------------------------------
# Runners
# --------------------------------------------------------------------------------------------


class Runner(Protocol):
    name: str
    device: str

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """Probabilities (N, K, H, W) float32 of normalised images (N, 3, H, W) float32."""
        ...


def cpu_threads() -> int:
    """CPU threads for one process: the cores it may use, shared among the ranks of a node."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        cores = os.cpu_count() or 1
    ranks = int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)
    return max(1, cores // max(1, ranks))


class OnnxRunner:
    """An ONNX Runtime session on the CPU (of ``graph``, or of ``data``: the graph's bytes, read
    once and checked, so the session runs exactly what was checked)."""

    name = "onnx"
    device = "cpu"

    def __init__(self, graph: Path, threads: int | None = None, data: bytes | None = None) -> None:
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = threads or cpu_threads()
        so.inter_op_num_threads = 1
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # fatal only: ORT would also print each failure itself (in colour, on stderr), which the
        # one-line error already says
        so.log_severity_level = 4
        # Idle worker threads would otherwise spin between windows and starve the reader and
        # writer threads on small machines.
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            source = data if data is not None else str(graph)
            self.session = ort.InferenceSession(source, so, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own exception types
            first = first_line(exc, 200, "unreadable")
            raise InputError(
                f"{graph} is not a usable ONNX graph ({first}); delete it (it is re-exported) "
                "or use --backend torch"
            ) from None
        self.graph = graph
        self.input = self.session.get_inputs()[0].name
        self.meta: dict[str, str] = dict(self.session.get_modelmeta().custom_metadata_map)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        out = self.session.run(None, {self.input: np.ascontiguousarray(x, np.float32)})[0]
        return np.asarray(out, np.float32)


_OOM_WORDS = (
    "out of memory",
    "not enough memory",
    "can't allocate memory",
    "cannot allocate memory",
    "failed to allocate memory",
    "bad allocation",
    "bad_alloc",
)


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether an error of a runner (ONNX Runtime's ``Fail``, PyTorch's RuntimeError or
    ``OutOfMemoryError``, numpy's MemoryError) means that memory ran out."""
    if isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError":
        return True
    text = str(exc).lower()
    return any(w in text for w in _OOM_WORDS)


class TorchRunner:
    """Eager PyTorch: bf16 autocast and channels-last on CUDA, pinned host memory for uploads."""

    name = "torch"

    def __init__(self, model: torch.nn.Module, device: torch.device) -> None:
        import torch

        self.torch = torch
        self.dev = device
        self.device = str(device)
        self.cuda = device.type == "cuda"
        self.model = model.to(device).eval()
        if self.cuda:
            self.model = self.model.to(memory_format=torch.channels_last)
        self._pinned: torch.Tensor | None = None

    def _upload(self, x: np.ndarray) -> torch.Tensor:
        torch = self.torch
        t = torch.from_numpy(np.ascontiguousarray(x, np.float32))
        if not self.cuda:
            return t.to(self.dev)
        if self._pinned is None or self._pinned.numel() < t.numel():
            self._pinned = torch.empty(t.numel(), dtype=torch.float32).pin_memory()
        buf = self._pinned[: t.numel()].view(t.shape)
        buf.copy_(t)
        dev_t = buf.to(self.dev, non_blocking=True)
        return dev_t.contiguous(memory_format=torch.channels_last)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        torch = self.torch
        with torch.inference_mode():
            xt = self._upload(x)
            with torch.autocast(self.dev.type, dtype=torch.bfloat16, enabled=self.cuda):
                p = self.model(xt)
            return p.float().cpu().numpy()


# --------------------------------------------------------------------------------------------
# A model ready to predict, whatever the backend
# --------------------------------------------------------------------------------------------


@dataclass
class InferenceModel:
    """A model's data contract and a runner for its networks."""

    contract: DataContract
    runner: Runner
    path: Path
    iteration: int
    nets: str

    @property
    def backend(self) -> str:
        return self.runner.name


def from_loaded(loaded: LoadedModel, device: torch.device | str = "cpu") -> InferenceModel:
    """Wrap a model loaded with :func:`cloudcps.models.load_for_inference` (PyTorch backend)."""
    import torch

    return InferenceModel(
        contract=loaded.contract,
        runner=TorchRunner(loaded.model, torch.device(device)),
        path=loaded.path,
        iteration=loaded.iteration,
        nets=str(len(loaded.model.nets)),
    )


def gpu_may_exist() -> bool:
    """Whether looking for CUDA or MPS is worth importing PyTorch (about 2 s) at all."""
    if sys.platform == "darwin" and platform.machine() == "arm64":
        return True
    return Path("/proc/driver/nvidia/version").exists() or Path("/dev/nvidia0").exists()


def choose_backend(backend: str, device: str | None) -> tuple[str, str]:
    """(backend, device) for ``--backend`` and ``--device``: auto is ONNX on the CPU and PyTorch
    on CUDA or MPS."""
    if backend not in BACKENDS:
        raise InputError(f"--backend {backend}: choose one of {', '.join(BACKENDS)}")
    device = device or "auto"
    if backend == "onnx":
        if device not in ("auto", "cpu"):
            raise InputError(
                f"--backend onnx runs on the CPU, not --device {device}; use --backend torch"
            )
        return "onnx", "cpu"
    if device == "auto":
        if not gpu_may_exist():
            device = "cpu"
        else:
            from cloudcps.devices import pick_device

            device = pick_device("auto", int(os.environ.get("LOCAL_RANK", "0") or 0)).type
    if device == "cuda" and os.environ.get("LOCAL_RANK"):
        device = f"cuda:{int(os.environ['LOCAL_RANK'])}"
    if backend == "auto":
        backend = "onnx" if device == "cpu" else "torch"
    return backend, device


def load_model(
    model: str | os.PathLike[str],
    nets: str = "1",
    backend: str = "auto",
    device: str | None = None,
    threads: int | None = None,
) -> InferenceModel:
    """Load a checkpoint (or run folder, or ``default``) for prediction on the chosen backend.

    Args:
        nets: ``1``, ``2`` or ``both`` (the mean of both networks' softmax; measured to gain
            nothing over one network on the real validation sets, at twice the time).
        backend, device: see :func:`choose_backend`.
        threads: CPU threads (default: :func:`cpu_threads`).
    """
    backend, dev = choose_backend(backend, device)
    ckpt = resolve_checkpoint(model)
    if backend == "torch":
        import torch

        from cloudcps.devices import pick_device
        from cloudcps.models import load_for_inference

        if threads:
            torch.set_num_threads(threads)
        d = pick_device(dev.split(":")[0])
        if ":" in dev:
            d = torch.device(dev)
        return from_loaded(load_for_inference(ckpt, nets=nets, device=d), d)
    graph, data = graph_for(ckpt, nets)
    runner = OnnxRunner(graph, threads, data)
    meta = runner.meta
    try:
        contract = DataContract.from_dict(json.loads(meta["contract"]))
        iteration = int(meta.get("iteration", "0"))
    except (KeyError, TypeError, ValueError) as exc:
        raise InputError(
            f"{runner.graph} lacks cloudcps metadata ({exc}); delete it to re-export"
        ) from None
    return InferenceModel(contract, runner, ckpt, iteration, meta.get("nets", nets))


# --------------------------------------------------------------------------------------------
# ONNX export and cache
# --------------------------------------------------------------------------------------------


def _graph_meta(model: Any) -> dict[str, str]:
    return {p.key: p.value for p in model.metadata_props}


def _parse_graph(data: bytes) -> Any:
    """The ``onnx.ModelProto`` of a graph's bytes, or None when they are not a graph."""
    try:
        import onnx

        return onnx.load_from_string(data)
    except Exception:
        return None


def _matches(meta: dict[str, str], digest: str, nets: str) -> bool:
    if meta.get("checkpoint_sha256") != digest or meta.get("graph_version") != str(GRAPH_VERSION):
        return False
    return meta.get("nets", "") == _chosen_nets(meta, nets)


def _chosen_nets(meta: dict[str, str], nets: str) -> str:
    total = int(meta.get("nets_total", "0") or 0)
    return ",".join(str(i + 1) for i in range(total)) if nets == "both" else nets


# Reading a checkpoint's tensors without PyTorch (to check a graph's weights against them):
# the zip of ``torch.save`` holds a pickle whose tensors point at raw storages in the zip.
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


def _checkpoint_tensors(data: bytes, chosen: list[int]) -> list[dict[str, Any]] | None:
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


def _weights_agree(model: Any, data: bytes, nets: str) -> str | None:
    """None when every initializer of the graph that is a copy of a checkpoint tensor (by name:
    ``nets.J.KEY``; those the export folded into others are renamed) equals it, and there is at
    least one; else why not."""
    from onnx import numpy_helper

    meta = _graph_meta(model)
    try:
        chosen = [int(i) - 1 for i in _chosen_nets(meta, nets).split(",")]
    except ValueError:
        return "its metadata names no networks"
    tensors = _checkpoint_tensors(data, chosen)
    if tensors is None:
        return "the checkpoint's tensors could not be read to compare"
    compared = 0
    for init in model.graph.initializer:
        head, _, key = init.name.partition(".")
        j, _, key = key.partition(".")
        if head != "nets" or not j.isdigit() or int(j) >= len(tensors):
            continue
        read = tensors[int(j)].get(key)
        if read is None:
            return f"its weight {init.name} is not in the checkpoint"
        mine, theirs = read(), numpy_helper.to_array(init)
        if mine.shape != theirs.shape or not np.array_equal(mine, theirs.astype(np.float32)):
            return f"its weight {init.name} differs from the checkpoint's"
        compared += 1
    return None if compared else "it holds no weight to compare with the checkpoint"


def _checkpoint_field(data: bytes, key: str) -> Any:
    """One top-level entry of a checkpoint's bytes, read without PyTorch (None if absent)."""
    try:
        z = zipfile.ZipFile(io.BytesIO(data))
        pkl = next(n for n in z.namelist() if n.endswith("/data.pkl"))
        state = _TensorRefUnpickler(io.BytesIO(z.read(pkl))).load()
    except Exception:
        return None
    return state.get(key) if isinstance(state, dict) else None


def check_shipped_graph(graph_bytes: bytes, ckpt_bytes: bytes, nets: str) -> str | None:
    """None when a graph beside a checkpoint provably belongs to it, else why not: the
    checkpoint (whose bytes were hashed) names the graph's SHA-256 as its own (``onnx_sha256``,
    written by :func:`vouch_for_graph`), the graph serves ``nets``, and every weight the graph
    keeps under its checkpoint name equals the checkpoint's."""
    model = _parse_graph(graph_bytes)
    if model is None:
        return "it is not a readable ONNX graph"
    meta = _graph_meta(model)
    if meta.get("graph_version") != str(GRAPH_VERSION) or meta.get("nets", "") != _chosen_nets(
        meta, nets
    ):
        return "it was exported for other networks or by another version"
    why = _weights_agree(model, ckpt_bytes, nets)
    if why is not None:
        return why
    vouched = _checkpoint_field(ckpt_bytes, "onnx_sha256")
    if not (isinstance(vouched, dict) and vouched.get("sha256") == bytes_sha256(graph_bytes)):
        return "the checkpoint does not name this graph (its SHA-256) as its own"
    return None


def vouch_for_graph(ckpt: Path, graph: Path) -> None:
    """Record in ``ckpt`` the SHA-256 of the graph exported from it and shipped beside it, so
    prediction may run that graph without PyTorch (see :func:`check_shipped_graph`)."""
    from cloudcps.models import load_checkpoint, save_checkpoint

    state = load_checkpoint(ckpt)
    for key in ("format", "version", "cloudcps_version"):
        state.pop(key, None)
    state["onnx_sha256"] = {"sha256": file_sha256(graph), "file": graph.name}
    save_checkpoint(ckpt, state)


def _record_path(graph: Path) -> Path:
    return graph.with_name(graph.name + ".json")


def _write_record(graph: Path, graph_bytes: bytes, digest: str, nets: str) -> None:
    """Write beside a graph just exported the proof that it is ours: the SHA-256 of the graph
    file and of the checkpoint it was exported from."""
    from cloudcps.io import atomic_file

    record = {
        "graph_sha256": bytes_sha256(graph_bytes),
        "checkpoint_sha256": digest,
        "nets": nets,
        "graph_version": GRAPH_VERSION,
        "cloudcps_version": __version__,
    }
    with atomic_file(_record_path(graph), overwrite=True) as tmp:
        tmp.write_text(json.dumps(record, indent=2) + "\n")


def _read_record(graph: Path) -> dict[str, Any]:
    try:
        rec = json.loads(_record_path(graph).read_text())
    except (OSError, ValueError):
        return {}
    return rec if isinstance(rec, dict) else {}


def check_graph(graph_bytes: bytes, digest: str, nets: str, record: dict[str, Any]) -> str | None:
    """None when a cached graph provably comes from the checkpoint of SHA-256 ``digest`` with
    networks ``nets``, else why not: it must be the very file written at export (``record``,
    written beside it then, holds its SHA-256) and name that checkpoint."""
    model = _parse_graph(graph_bytes)
    if model is None:
        return "it is not a readable ONNX graph"
    meta = _graph_meta(model)
    if not _matches(meta, digest, nets):
        if meta.get("checkpoint_sha256") != digest:
            return "it was exported from another checkpoint"
        return "it was exported for other networks or by another version"
    if record.get("graph_sha256") != bytes_sha256(graph_bytes):
        return "it is not the file cloudcps exported there (its SHA-256 is not the recorded one)"
    if record.get("checkpoint_sha256") != digest:
        return "its record names another checkpoint"
    return None


def onnx_graph(ckpt: Path, nets: str = "both") -> Path:
    """The ONNX graph of ``ckpt`` with networks ``nets``: shipped beside it, cached, or exported
    now (once; needs PyTorch and the ``onnx`` package)."""
    return graph_for(ckpt, nets)[0]


def graph_for(ckpt: Path, nets: str = "both") -> tuple[Path, bytes]:
    """The path and bytes of the ONNX graph of ``ckpt`` with networks ``nets`` (see
    :func:`onnx_graph`), checked to come from the checkpoint's bytes, which are read once."""
    try:
        data = ckpt.read_bytes()
    except OSError as exc:
        raise InputError(f"--model {ckpt} cannot be read ({exc.strerror}); check it") from None
    digest = bytes_sha256(data)
    beside = ckpt.with_suffix(".onnx")
    if beside.is_file():
        g = beside.read_bytes()
        why = check_shipped_graph(g, data, nets)
        if why is None:
            return beside, g
        if "other networks" not in why:
            log.warning(
                "ignoring %s beside the checkpoint: %s; exporting the checkpoint's own graph to "
                "the cache",
                beside,
                why,
            )
    cached = cache_dir() / "onnx" / f"{digest[:24]}-nets{nets}-g{GRAPH_VERSION}.onnx"
    if cached.is_file():
        g = cached.read_bytes()
        why = check_graph(g, digest, nets, _read_record(cached))
        if why is None:
            return cached, g
        log.warning("re-exporting the cached graph %s: %s", cached, why)
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        probe = cached.parent / f".probe-{uuid.uuid4().hex[:8]}"
        probe.touch()
        probe.unlink()
    except OSError:
        tmp_dir = tempfile.mkdtemp(prefix="cloudcps-onnx-")
        atexit.register(shutil.rmtree, tmp_dir, True)  # a graph no later run can find
        cached = Path(tmp_dir) / cached.name
        log.warning(
            "the graph cache %s is not writable; exporting to %s for this run only (set "
            "CLOUDCPS_CACHE to keep it)",
            cache_dir(),
            cached.parent,
        )
    log.info("exporting %s to ONNX once (cached at %s)", ckpt, cached)
    g = _export(ckpt, nets, cached, digest, data)
    _write_record(cached, g, digest, nets)
    return cached, g


def export_onnx(
    ckpt: Path, nets: str, dest: Path, digest: str | None = None, data: bytes | None = None
) -> Path:
    """Export the networks ``nets`` of ``ckpt`` (softmax mean included) to an ONNX graph with
    dynamic batch, height and width and the data contract in its metadata.

    ``data`` (the checkpoint's bytes, read by the caller, of SHA-256 ``digest``) is what is
    exported; without it the file is read here, once."""
    if data is None:
        data = ckpt.read_bytes()
    _export(ckpt, nets, dest, digest or bytes_sha256(data), data)
    return dest


def _load_bytes(ckpt: Path, data: bytes, nets: str) -> LoadedModel:
    """:func:`cloudcps.models.load_for_inference` of a checkpoint's bytes (from a private copy,
    so what is loaded is what was hashed even if ``ckpt`` is replaced meanwhile)."""
    from cloudcps.models import load_for_inference

    folder = Path(tempfile.mkdtemp(prefix="cloudcps-ckpt-"))
    copy = folder / ckpt.name
    try:
        copy.write_bytes(data)
        loaded = load_for_inference(copy, nets=nets)
    except InputError as exc:
        raise InputError(str(exc).replace(str(copy), str(ckpt))) from None
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    loaded.path = ckpt
    return loaded


def _export(ckpt: Path, nets: str, dest: Path, digest: str, data: bytes) -> bytes:
    """Export ``data`` (the bytes of ``ckpt``) to ``dest``; the bytes written."""
    import onnx
    import torch

    from cloudcps.io import atomic_file

    loaded = _load_bytes(ckpt, data, nets)
    total = int(loaded.meta["nets_total"])
    chosen = list(range(1, total + 1)) if nets == "both" else [int(nets)]
    axes = {0: "batch", 2: "height", 3: "width"}
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            loaded.model.eval(),
            (torch.zeros(1, 3, 256, 256),),
            buf,  # type: ignore[arg-type]  # a file object works (and is documented)
            input_names=["image"],
            output_names=["probabilities"],
            dynamic_axes={"image": axes, "probabilities": axes},
            opset_version=OPSET,
            do_constant_folding=True,
            dynamo=False,
        )
    m = onnx.load_from_string(buf.getvalue())
    meta = {
        "contract": json.dumps(loaded.contract.to_dict()),
        "iteration": str(loaded.iteration),
        "nets": ",".join(map(str, chosen)),
        "nets_total": str(total),
        "checkpoint": ckpt.name,
        "checkpoint_sha256": digest,
        "model": json.dumps(loaded.spec.to_dict()),
        "graph_version": str(GRAPH_VERSION),
        "cloudcps_version": __version__,
        "inputs": "image: float32 (N, 3, H, W), H and W multiples of 32, 8-bit stretch / 255 "
        "normalised by the contract's mean and std",
        "outputs": "probabilities: float32 (N, K, H, W), mean softmax of the networks",
    }
    for k, v in meta.items():
        entry = m.metadata_props.add()
        entry.key, entry.value = k, v
    graph = m.SerializeToString()
    with atomic_file(dest, overwrite=True) as tmp:
        tmp.write_bytes(graph)
    return graph


def describe(model: InferenceModel) -> dict[str, Any]:
    """What ran, for reports."""
    r = model.runner
    out: dict[str, Any] = {"backend": r.name, "device": r.device, "nets": model.nets}
    if isinstance(r, OnnxRunner):
        out["graph"] = str(r.graph)
    return out
