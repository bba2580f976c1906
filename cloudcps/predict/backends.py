"""Inference backends behind one call: ONNX Runtime on the CPU, PyTorch on CUDA, MPS or the CPU.

A backend is a callable from a batch of normalised images, float32 (N, 3, H, W), to class
probabilities, float32 (N, K, H, W) (the mean of the chosen networks' softmax). The sliding-window
engine in :mod:`cloudcps.predict.engine` does everything else (reading, the stretch, blending,
writing) the same way for both, so the two backends differ only in how the networks run.

The ONNX graph of a checkpoint is exported once (this needs PyTorch), cached and checked to come
from the checkpoint (:mod:`cloudcps.predict.graphs`). The graph carries the checkpoint's data
contract in its metadata, so prediction with a cached graph never imports PyTorch: start-up
takes a fraction of a second and the process stays small.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from cloudcps.contract import DataContract
from cloudcps.errors import InputError, first_line
from cloudcps.modelfiles import resolve_checkpoint
from cloudcps.predict.graphs import graph_for

if TYPE_CHECKING:
    import torch

    from cloudcps.models import LoadedModel

log = logging.getLogger(__name__)

BACKENDS = ("auto", "onnx", "torch")


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


def describe(model: InferenceModel) -> dict[str, Any]:
    """What ran, for reports."""
    r = model.runner
    out: dict[str, Any] = {"backend": r.name, "device": r.device, "nets": model.nets}
    if isinstance(r, OnnxRunner):
        out["graph"] = str(r.graph)
    return out
