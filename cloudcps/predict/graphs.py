"""The ONNX graph of a checkpoint: exported once, cached, and used only when it provably comes
from the checkpoint.

The graph is exported once (this needs PyTorch) and cached under ``$CLOUDCPS_CACHE`` (default
``$XDG_CACHE_HOME/cloudcps`` or ``~/.cache/cloudcps``), keyed by the checkpoint's SHA-256 and the
networks chosen. A graph is used only when it provably comes from the checkpoint: the
checkpoint's bytes are read and hashed once and the graph is exported from those same bytes; a
cached graph must match the record written beside it at export (the SHA-256 of the graph file and
of its checkpoint), and a graph that ships beside a checkpoint (``starter.onnx`` beside
``starter.pt``) must be named by the checkpoint itself (its ``onnx_sha256``, recorded by
:func:`vouch_for_graph` when it was packaged; the checkpoint's bytes are what was hashed) and hold
the checkpoint's weights where it keeps their names (compared with the checkpoint's tensors, read
without PyTorch: :mod:`cloudcps.predict.ckptread`); any other graph is ignored and re-exported.
"""

from __future__ import annotations

import atexit
import hashlib
import io
import json
import logging
import os
import shutil
import tempfile
import uuid
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cloudcps import __version__
from cloudcps.errors import InputError
from cloudcps.predict.ckptread import checkpoint_field, checkpoint_tensors

if TYPE_CHECKING:
    from cloudcps.models import LoadedModel

log = logging.getLogger(__name__)

GRAPH_VERSION = 1  # bump when the exported graph's inputs, outputs or metadata change
OPSET = 17


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
# Checking a graph
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
    tensors = checkpoint_tensors(data, chosen)
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
    vouched = checkpoint_field(ckpt_bytes, "onnx_sha256")
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
