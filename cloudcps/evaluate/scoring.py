"""What every way of scoring shares: class folding (``--merge``) and the :class:`Evaluation`.

Classes can be folded, e.g. thick + thin cloud -> cloud and shadow -> clear, to score a 4-class
model against a binary reference; an :class:`Evaluation` holds the confusion matrices of
several named entries over one class set, which :mod:`cloudcps.evaluate.report` writes out.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cloudcps.contract import IGNORE_INDEX
from cloudcps.errors import InputError


def parse_merge(items: Sequence[str]) -> dict[int, int]:
    """``["1,2:1", "3:0"]`` -> ``{1: 1, 2: 1, 3: 0}`` (sources to target class id)."""
    mapping: dict[int, int] = {}
    for item in items:
        try:
            src, dst = item.split(":")
            target = int(dst)
            for s in src.split(","):
                if int(s) in mapping and mapping[int(s)] != target:
                    raise ValueError(f"class {s} is merged twice")
                mapping[int(s)] = target
        except ValueError as exc:
            raise ValueError(
                f"--merge {item!r}: expected SRC[,SRC...]:DST like 1,2:1 ({exc})"
            ) from None
    return mapping


@dataclass(frozen=True)
class ClassFold:
    """A mapping of K original classes onto K' folded classes with joined names."""

    lut: tuple[int, ...]
    names: tuple[str, ...]

    @classmethod
    def build(cls, names: Sequence[str], merge: dict[int, int] | None) -> ClassFold:
        k = len(names)
        if not merge:
            return cls(tuple(range(k)), tuple(names))
        bad = sorted(c for c in list(merge) + list(merge.values()) if not 0 <= c < k)
        if bad:
            raise InputError(f"--merge names class ids {bad} but the classes are 0..{k - 1}")
        targets = [merge.get(i, i) for i in range(k)]
        new_ids = sorted(set(targets))
        renum = {t: n for n, t in enumerate(new_ids)}
        lut = tuple(renum[t] for t in targets)
        joined = tuple(
            "+".join(names[i] for i in range(k) if lut[i] == n) for n in range(len(new_ids))
        )
        return cls(lut, joined)

    @property
    def num_out(self) -> int:
        return len(self.names)

    def apply(self, labels: np.ndarray) -> np.ndarray:
        table = np.full(256, IGNORE_INDEX, np.uint8)
        table[: len(self.lut)] = self.lut
        return table[labels.astype(np.int64).clip(0, 255)]


@dataclass
class Evaluation:
    """Confusion matrices of several named entries over one class set, plus sample panels."""

    classes: tuple[str, ...]
    confusion: dict[str, np.ndarray]
    source: str
    samples: list[dict[str, Any]] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
