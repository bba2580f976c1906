"""Inference backends behind one call: ONNX Runtime on the CPU, PyTorch on CUDA, MPS or the CPU.

A backend is a callable from a batch of normalised images, float32 (N, 3, H, W), to class
probabilities, float32 (N, K, H, W) (the mean of the chosen networks' softmax). The sliding-window
engine in :mod:`cloudcps.predict` does everything else (reading, the stretch, blending, writing)
the same way for both, so the two backends differ only in how the networks run.

The ONNX graph of a checkpoint is exported once (this needs PyTorch) and cached under
``$CLOUDCPS_CACHE`` (default ``$XDG_CACHE_HOME/cloudcps`` or ``~/.cache/cloudcps``), keyed by the
checkpoint's SHA-256 and the networks chosen; a graph that ships beside a checkpoint
(``starter.onnx`` beside ``starter.pt``) is used when its recorded hash matches. The graph carries
the checkpoint's data contract in its metadata, so prediction with a cached graph never imports
PyTorch: start-up takes a fraction of a second and the process stays small.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import sys
import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from cloudcps import __version__
from cloudcps.errors import InputError, first_line
from cloudcps.tiling import DataContract

if TYPE_CHECKING:
    import torch

    from cloudcps.models import LoadedModel

log = logging.getLogger(__name__)

BACKENDS = ("auto", "onnx", "torch")
GRAPH_VERSION = 1  # bump when the exported graph's inputs, outputs or metadata change
OPSET = 17
DEFAULT_MODEL = "default"
DEFAULT_MODEL_FILE = "starter.pt"


# --------------------------------------------------------------------------------------------
# Model files
# --------------------------------------------------------------------------------------------


def default_model_path() -> Path:
    """The starter cloud model that ships inside the package (``--model default``)."""
    from importlib.resources import files

    path = Path(str(files("cloudcps") / "weights" / DEFAULT_MODEL_FILE))
    if not path.is_file():
        raise InputError(
            f"the default model {path} is not installed; reinstall cloudcps, or give --model "
            "RUN_OR_CKPT"
        )
    return path


def resolve_checkpoint(path: str | os.PathLike[str], prefer: str = "best.pt") -> Path:
    """A checkpoint file, ``prefer`` (then ``latest.pt``) inside a run folder, or ``default``
    (the starter model that ships with cloudcps)."""
    if str(path) == DEFAULT_MODEL and not Path(path).exists():
        return default_model_path()
    p = Path(path)
    if p.is_dir():
        for name in (prefer, "latest.pt", "best.pt"):
            if (p / name).is_file():
                return p / name
        raise InputError(f"--model {p} holds no best.pt or latest.pt; give a run folder or a .pt")
    if not p.is_file():
        raise InputError(f"--model {p} does not exist; give a run folder or a checkpoint file")
    return p


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
    """An ONNX Runtime session on the CPU."""

    name = "onnx"
    device = "cpu"

    def __init__(self, graph: Path, threads: int | None = None) -> None:
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = threads or cpu_threads()
        so.inter_op_num_threads = 1
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.log_severity_level = 3
        # Idle worker threads would otherwise spin between windows and starve the reader and
        # writer threads on small machines.
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self.session = ort.InferenceSession(str(graph), so, providers=["CPUExecutionProvider"])
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
            from cloudcps.cps import pick_device

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

        from cloudcps.cps import pick_device
        from cloudcps.models import load_for_inference

        if threads:
            torch.set_num_threads(threads)
        d = pick_device(dev.split(":")[0])
        if ":" in dev:
            d = torch.device(dev)
        return from_loaded(load_for_inference(ckpt, nets=nets, device=d), d)
    runner = OnnxRunner(onnx_graph(ckpt, nets), threads)
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


def _graph_meta(graph: Path) -> dict[str, str]:
    try:
        import onnx

        m = onnx.load(str(graph), load_external_data=False)
    except Exception:
        return {}
    return {p.key: p.value for p in m.metadata_props}


def _matches(meta: dict[str, str], digest: str, nets: str) -> bool:
    if meta.get("checkpoint_sha256") != digest or meta.get("graph_version") != str(GRAPH_VERSION):
        return False
    total = int(meta.get("nets_total", "0") or 0)
    chosen = meta.get("nets", "")
    want = ",".join(str(i + 1) for i in range(total)) if nets == "both" else nets
    return chosen == want


def onnx_graph(ckpt: Path, nets: str = "both") -> Path:
    """The ONNX graph of ``ckpt`` with networks ``nets``: shipped beside it, cached, or exported
    now (once; needs PyTorch and the ``onnx`` package)."""
    digest = file_sha256(ckpt)
    beside = ckpt.with_suffix(".onnx")
    if beside.is_file() and _matches(_graph_meta(beside), digest, nets):
        return beside
    cached = cache_dir() / "onnx" / f"{digest[:24]}-nets{nets}-g{GRAPH_VERSION}.onnx"
    if cached.is_file() and _matches(_graph_meta(cached), digest, nets):
        return cached
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        probe = cached.parent / f".probe-{uuid.uuid4().hex[:8]}"
        probe.touch()
        probe.unlink()
    except OSError:
        import tempfile

        cached = Path(tempfile.mkdtemp(prefix="cloudcps-onnx-")) / cached.name
        log.warning(
            "the graph cache %s is not writable; exporting to %s (set CLOUDCPS_CACHE to keep it)",
            cache_dir(),
            cached.parent,
        )
    log.info("exporting %s to ONNX once (cached at %s)", ckpt, cached)
    export_onnx(ckpt, nets, cached, digest)
    return cached


def export_onnx(ckpt: Path, nets: str, dest: Path, digest: str | None = None) -> Path:
    """Export the networks ``nets`` of ``ckpt`` (softmax mean included) to an ONNX graph with
    dynamic batch, height and width and the data contract in its metadata."""
    import torch

    from cloudcps.io import atomic_file
    from cloudcps.models import load_for_inference

    loaded = load_for_inference(ckpt, nets=nets)
    total = int(loaded.meta["nets_total"])
    chosen = list(range(1, total + 1)) if nets == "both" else [int(nets)]
    axes = {0: "batch", 2: "height", 3: "width"}
    with atomic_file(dest, overwrite=True) as tmp:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                loaded.model.eval(),
                (torch.zeros(1, 3, 256, 256),),
                str(tmp),
                input_names=["image"],
                output_names=["probabilities"],
                dynamic_axes={"image": axes, "probabilities": axes},
                opset_version=OPSET,
                do_constant_folding=True,
                dynamo=False,
            )
        import onnx

        m = onnx.load(str(tmp))
        meta = {
            "contract": json.dumps(loaded.contract.to_dict()),
            "iteration": str(loaded.iteration),
            "nets": ",".join(map(str, chosen)),
            "nets_total": str(total),
            "checkpoint": ckpt.name,
            "checkpoint_sha256": digest or file_sha256(ckpt),
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
        onnx.save(m, str(tmp))
    return dest


def describe(model: InferenceModel) -> dict[str, Any]:
    """What ran, for reports."""
    r = model.runner
    out: dict[str, Any] = {"backend": r.name, "device": r.device, "nets": model.nets}
    if isinstance(r, OnnxRunner):
        out["graph"] = str(r.graph)
    return out
