"""Datasets for training: tile folders from ``cloudcps tile`` and PASCAL VOC 2012.

A sample is a dict: ``image`` (3, H, W) float tensor (ImageNet-normalised), ``mask`` (H, W) long
class ids with 255 = ignore (all 255 for unlabelled samples), ``valid`` (H, W) bool (pixels that
hold image data, not nodata or padding), and ``id``.

Randomness is a function of a per-sample seed that the sampler hands out with each index, so a
resumed run sees exactly the crops an uninterrupted run would have seen, whatever the number of
loader workers.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset, Sampler

from cloudcps.contract import (
    IGNORE_INDEX,
    IMAGENET_MEAN,
    IMAGENET_STD,
    MANIFEST_FORMAT,
    MAX_PARTIAL_CLASSES,
    PARTIAL_BASE,
    DataContract,
    Stretch,
)
from cloudcps.errors import InputError, first_line
from cloudcps.synthetic.clouds import SyntheticClouds
from cloudcps.synthetic.paste import PastedClouds

VOC_CLASSES: tuple[str, ...] = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair",
    "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)  # fmt: skip


@dataclass(frozen=True)
class Augment:
    """Training augmentation: random scale, random crop (padded), horizontal flip."""

    crop: int = 512
    scale_min: float = 0.5
    scale_max: float = 2.0
    flip: bool = True


@dataclass(frozen=True)
class Item:
    """Where one image (and its label / validity mask) lives."""

    id: str
    image: Path
    label: Path | None
    valid: Path | None = None


def _normalise(img: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    t = torch.from_numpy(np.array(img.transpose(2, 0, 1), dtype=np.float32)).div_(255.0)
    m = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
    return (t - m) / s


def augment(
    image: np.ndarray, mask: np.ndarray, valid: np.ndarray, aug: Augment, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Scale, crop (padding image 0, mask 255, valid False) and flip, all drawn from ``seed``."""
    rng = np.random.default_rng(seed)
    h, w = mask.shape
    s = float(rng.uniform(aug.scale_min, aug.scale_max))
    nh, nw = max(1, round(h * s)), max(1, round(w * s))
    if (nh, nw) != (h, w):
        image = np.asarray(Image.fromarray(image).resize((nw, nh), Image.Resampling.BILINEAR))
        mask = np.asarray(Image.fromarray(mask).resize((nw, nh), Image.Resampling.NEAREST))
        valid = np.asarray(
            Image.fromarray(valid.astype(np.uint8)).resize((nw, nh), Image.Resampling.NEAREST)
        ).astype(bool)
    c = aug.crop
    ph, pw = max(c, nh), max(c, nw)
    if (ph, pw) != (nh, nw):
        image = np.pad(image, ((0, ph - nh), (0, pw - nw), (0, 0)))
        mask = np.pad(mask, ((0, ph - nh), (0, pw - nw)), constant_values=IGNORE_INDEX)
        valid = np.pad(valid, ((0, ph - nh), (0, pw - nw)), constant_values=False)
    y = int(rng.integers(0, ph - c + 1))
    x = int(rng.integers(0, pw - c + 1))
    image, mask, valid = (
        image[y : y + c, x : x + c],
        mask[y : y + c, x : x + c],
        valid[y : y + c, x : x + c],
    )
    if aug.flip and rng.random() < 0.5:
        image, mask, valid = image[:, ::-1], mask[:, ::-1], valid[:, ::-1]
    return image, mask, valid


class SegmentationDataset(Dataset[dict[str, Any]]):
    """Images with optional labels; indexed by ``i`` or by ``(i, seed)`` for augmented samples.

    Args:
        items: the images.
        augment_cfg: training augmentation, or ``None`` for whole images (validation).
        labeled: whether labels are read (unlabelled samples get a mask of 255).
        mean, std: normalisation.
        num_classes: when given, a label value that is neither a class id, 255 (ignore) nor a
            partial-label code of these classes is an error naming the file (instead of an
            index error deep inside the loss).
        synthetic: synthetic clouds laid over a share of the augmented samples (drawn from each
            sample's seed, before the augmentation).
        paste: real clouds cut from other items of this dataset and pasted over a share of the
            augmented samples (drawn from each sample's seed, before the synthetic layers).
    """

    def __init__(
        self,
        items: Sequence[Item],
        augment_cfg: Augment | None = None,
        labeled: bool = True,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        num_classes: int | None = None,
        synthetic: SyntheticClouds | None = None,
        paste: PastedClouds | None = None,
    ) -> None:
        self.items = list(items)
        self.synthetic = synthetic
        self.paste = paste
        self.augment_cfg = augment_cfg
        self.labeled = labeled
        self.mean, self.std = tuple(mean), tuple(std)
        self.allowed: np.ndarray | None = None
        if num_classes is not None:
            ok = np.zeros(256, bool)
            ok[: min(num_classes, PARTIAL_BASE)] = True
            ok[IGNORE_INDEX] = True
            if num_classes <= MAX_PARTIAL_CLASSES:
                for code in range(PARTIAL_BASE + 1, PARTIAL_BASE + (1 << num_classes)):
                    ok[code] = True
            self.allowed = ok

    def __len__(self) -> int:
        return len(self.items)

    def load(self, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Raw image (H, W, 3) uint8, mask (H, W) uint8 and valid (H, W) bool of item ``i``."""
        it = self.items[i]
        reading = it.image
        try:
            with Image.open(it.image) as im:
                image = np.asarray(im.convert("RGB"))
            h, w = image.shape[:2]
            if self.labeled and it.label is not None:
                reading = it.label
                with Image.open(it.label) as lb:
                    mask = np.asarray(lb)
                if mask.ndim != 2:
                    raise InputError(f"label {it.label} is not a single-band (palette) image")
            else:
                mask = np.full((h, w), IGNORE_INDEX, np.uint8)
            if it.valid is not None:
                reading = it.valid
                with Image.open(it.valid) as vm:
                    valid = np.asarray(vm) > 0
            else:
                valid = np.ones((h, w), bool)
        # PIL: truncated, corrupt, not an image, or a header claiming a decompression bomb
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
            first = first_line(exc, None)
            raise InputError(
                f"cannot read {reading} ({first}); re-create it (cloudcps tile) or remove it "
                "from the split list"
            ) from None
        if self.allowed is not None and self.labeled and it.label is not None:
            if mask.dtype != np.uint8 or mask.min(initial=0) < 0:
                bad_values = sorted({int(v) for v in np.unique(mask) if not 0 <= v < 256})
            else:
                present = np.flatnonzero(np.bincount(mask.ravel(), minlength=256))
                bad_values = [int(v) for v in present if not self.allowed[v]]
            if bad_values:
                k = int(self.allowed[:PARTIAL_BASE].sum())
                raise InputError(
                    f"label {it.label} holds value {bad_values[0]}, not a class id 0..{k - 1}, "
                    "255 (ignore) or a partial-label code; re-tile with a --label-map that maps "
                    "every code"
                )
        if mask.shape != (h, w):
            raise InputError(
                f"label {it.label} is {mask.shape[1]}x{mask.shape[0]} but image {it.image} is "
                f"{w}x{h}"
            )
        return image, mask.astype(np.uint8), valid

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        i, seed = (key, 0) if isinstance(key, int) else key
        image, mask, valid = self.load(i)
        if self.paste is not None and not isinstance(key, int):
            image, mask = self.paste.apply(image, mask, valid, seed, self.load)
        if self.synthetic is not None and not isinstance(key, int):
            image, mask = self.synthetic.apply(image, mask, valid, seed)
        if self.augment_cfg is not None:
            image, mask, valid = augment(image, mask, valid, self.augment_cfg, seed)
        return {
            "image": _normalise(image, self.mean, self.std),
            "mask": torch.from_numpy(np.array(mask, dtype=np.int64)),
            "valid": torch.from_numpy(np.array(valid, dtype=bool)),
            "id": self.items[i].id,
        }


def label_class_counts(items: Sequence[Item], num_classes: int) -> np.ndarray:
    """Pixel count per class over the label images of ``items`` (partial labels not counted)."""
    counts = np.zeros(256, np.int64)
    for it in items:
        if it.label is None:
            continue
        try:
            with Image.open(it.label) as lb:
                counts += np.bincount(np.asarray(lb).ravel(), minlength=256)[:256]
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
            raise InputError(
                f"cannot read label {it.label} ({first_line(exc, None)}); re-create it "
                "(cloudcps tile) or remove it from the split list"
            ) from None
    return counts[:num_classes]


class InfiniteSampler(Sampler[tuple[int, int]]):
    """Endless reshuffled passes over ``n`` items, split across ranks, resumable.

    The stream is a pure function of ``seed``: pass ``e`` is a permutation drawn from
    ``(seed, e)``; global position ``p`` goes to rank ``p % world``; every position also gets its
    own augmentation seed. ``start`` skips the first ``start`` samples of this rank.
    """

    def __init__(self, n: int, seed: int, rank: int = 0, world: int = 1, start: int = 0) -> None:
        if n <= 0:
            raise ValueError("cannot sample from an empty dataset")
        self.n, self.seed, self.rank, self.world, self.start = n, seed, rank, world, start

    def _perm(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch]).permutation(self.n)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        k = self.start
        cache: tuple[int, np.ndarray] | None = None
        while True:
            p = self.rank + k * self.world
            epoch, j = divmod(p, self.n)
            if cache is None or cache[0] != epoch:
                cache = (epoch, self._perm(epoch))
            aug_seed = int(np.random.default_rng([self.seed, 7919, p]).integers(2**31))
            yield int(cache[1][j]), aug_seed
            k += 1


# --------------------------------------------------------------------------------------------
# Tile folders
# --------------------------------------------------------------------------------------------


class TileFolder:
    """A folder written by ``cloudcps tile``: manifest, split lists, images, labels."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        mpath = self.root / "manifest.json"
        if not mpath.is_file():
            raise InputError(
                f"--data {self.root} is not a tile folder (no manifest.json); make one with "
                "cloudcps tile"
            )
        try:
            self.manifest: dict[str, Any] = json.loads(mpath.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise InputError(f"{mpath} is not valid JSON ({exc})") from None
        if not isinstance(self.manifest, dict) or self.manifest.get("format") != MANIFEST_FORMAT:
            raise InputError(
                f"{mpath} is not a cloudcps tile manifest; make one with cloudcps tile"
            )
        try:
            self.contract = DataContract.from_dict(self.manifest)
            self.tiles = {str(t["id"]): t for t in self.manifest["tiles"]}
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise InputError(
                f"{mpath} is damaged ({type(exc).__name__}: {exc}); re-run cloudcps tile"
            ) from None

    def split(self, name: str) -> list[str]:
        path = self.root / "splits" / f"{name}.txt"
        if not path.is_file():
            raise InputError(f"split list {path} is missing; re-run cloudcps tile")
        if self.root.resolve() not in path.resolve().parents:
            raise InputError(
                f"split list {path} leads out of the tile folder to {path.resolve()}; cloudcps "
                "reads only files under --data: copy the list in instead of a link"
            )
        ids = [ln.strip() for ln in path.read_text().splitlines() if ln.strip()]
        unknown = [i for i in ids if i not in self.tiles]
        if unknown:
            raise InputError(f"{path} names tiles missing from the manifest: {unknown[:3]}")
        return ids

    def _file(self, tile_id: str, key: str, value: Any) -> Path:
        """A tile's file: a relative path that stays inside the tile folder (no absolute path,
        no ``..``, no symlink out of it) and exists, checked before training starts."""
        mpath = self.root / "manifest.json"
        rel = Path(str(value))
        if rel.is_absolute() or ".." in rel.parts or not str(value).strip():
            raise InputError(
                f"{mpath}: tile {tile_id} {key} {str(value)!r} is not a path inside the tile "
                "folder; cloudcps reads only files under --data: re-run cloudcps tile"
            )
        path = self.root / rel
        if not path.is_file():
            raise InputError(
                f"{path} (tile {tile_id} of the manifest) is missing; re-run cloudcps tile, or "
                "remove the tile from the split lists"
            )
        if self._resolved_root not in path.resolve().parents:
            raise InputError(
                f"{path} (tile {tile_id}) leads out of the tile folder to {path.resolve()}; "
                "cloudcps reads only files under --data: copy the file in instead of a link"
            )
        return path

    def items(self, ids: Sequence[str]) -> list[Item]:
        self._resolved_root = self.root.resolve()
        out = []
        for i in ids:
            t = self.tiles[i]
            out.append(
                Item(
                    id=i,
                    image=self._file(i, "image", t["image"]),
                    label=self._file(i, "label", t["label"]) if t.get("label") else None,
                    valid=(
                        self._file(i, "valid_mask", t["valid_mask"])
                        if t.get("valid_mask")
                        else None
                    ),
                )
            )
        return out


# --------------------------------------------------------------------------------------------
# PASCAL VOC 2012
# --------------------------------------------------------------------------------------------


def _read_id_list(path: Path) -> list[str]:
    ids = []
    for line in path.read_text().splitlines():
        tok = line.strip().split()
        if tok:
            ids.append(Path(tok[0]).stem)  # "JPEGImages/x.jpg y.png" lines and bare ids alike
    return ids


def voc_contract(crop: int) -> DataContract:
    """The data contract of a VOC-trained model: RGB 8-bit input, 21 classes."""
    return DataContract(
        classes=VOC_CLASSES,
        bands=(1, 2, 3),
        stretch=Stretch("none", (0.0,) * 3, (255.0,) * 3),
        tile_size=crop,
        band_names=("red", "green", "blue"),
    )


class VOC:
    """PASCAL VOC 2012 in the devkit layout with TorchSemiSeg's split lists."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        if not (self.root / "JPEGImages").is_dir():
            raise InputError(f"--voc {self.root} has no JPEGImages folder; give the VOC2012 root")
        for name in ("SegmentationClassAug", "SegmentationClass"):
            if (self.root / name).is_dir():
                self.label_dir = self.root / name
                break
        else:
            raise InputError(
                f"--voc {self.root} has neither SegmentationClassAug nor SegmentationClass"
            )

    def _list(self, name: str) -> Path | None:
        for cand in (self.root / name, self.root / "splits" / name):
            if cand.is_file():
                return cand
        return None

    def train_lists(self, split: str) -> tuple[list[str], list[str] | None]:
        """Labelled and unlabelled ids for ``split`` (a name like ``1-8`` or a list file)."""
        path = Path(split)
        if path.is_file():
            return _read_id_list(path), None
        lab = self._list(f"train_aug_labeled_{split}.txt")
        unl = self._list(f"train_aug_unlabeled_{split}.txt")
        if lab is None:
            raise InputError(
                f"--voc-split {split}: neither a file nor train_aug_labeled_{split}.txt in "
                f"{self.root} or {self.root / 'splits'}"
            )
        return _read_id_list(lab), _read_id_list(unl) if unl else None

    def val_ids(self) -> list[str]:
        path = self.root / "ImageSets" / "Segmentation" / "val.txt"
        if not path.is_file():
            raise InputError(f"{path} is missing; the VOC devkit layout has it")
        return _read_id_list(path)

    def items(self, ids: Sequence[str], labeled: bool = True) -> list[Item]:
        out = []
        for i in ids:
            img = self.root / "JPEGImages" / f"{i}.jpg"
            if not img.is_file():
                raise InputError(f"VOC image {img} is missing")
            lab = self.label_dir / f"{i}.png"
            if labeled and not lab.is_file():
                raise InputError(f"VOC label {lab} is missing")
            out.append(Item(id=i, image=img, label=lab if labeled else None))
        return out
