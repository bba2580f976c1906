"""Metadata is untrusted input: helpers every product reader uses on what a product says.

A product's metadata (an MTL, an MTD XML, a STAC item) chooses file names, band paths and
scaling. None of it is taken as given:

- a name becomes a file name only through :func:`safe_name` (a base name without separators,
  control characters or a leading dot; else the product's own file or folder name);
- a path it names must stay inside the product (:func:`member_name`, :func:`inside`), and an item
  read from a URL may name remote assets only (:func:`remote_href`);
- every read is bounded: :func:`read_limited` for files and archive members,
  :func:`fetch_url` for URLs (a size limit and an overall deadline, not a per-read timeout),
  :func:`gdal_http_options` for GDAL's reads of remote rasters (the same deadline per request);
- every number is checked finite and in range (:func:`number`), every structure's type
  (:func:`group`, :func:`text`, :func:`objects`).

Each failure is one :class:`~cloudcps.errors.InputError` line naming the file, the field and the
value. The limits are configurable through the environment: ``CLOUDCPS_METADATA_MAX_MB`` (the
largest metadata file or reply read, default 16) and ``CLOUDCPS_FETCH_TIMEOUT`` (seconds for a
whole URL fetch, default 20).
"""

from __future__ import annotations

import math
import os
import re
import time
from pathlib import Path
from typing import IO, Any

from cloudcps.errors import InputError
from cloudcps.io import contains

METADATA_MAX_MB = 16.0
FETCH_TIMEOUT_S = 20.0
_UNSAFE = re.compile(r"[/\\\x00-\x1f\x7f]")
NAME_MAX = 200  # leaves room for "_mask_proba.tif" within the 255 bytes of a file name


def _env_limit(var: str, default: float, lo: float, hi: float) -> float:
    raw = os.environ.get(var)
    if raw is None or not raw.strip():
        return default
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and lo <= value <= hi):
        raise InputError(
            f"environment variable {var}={raw!r} is not a number in [{lo:g}, {hi:g}]; set it to "
            f"one (default {default:g}) or unset it"
        )
    return value


def metadata_max_bytes() -> int:
    """The largest metadata file, archive member or URL reply (``CLOUDCPS_METADATA_MAX_MB``)."""
    return int(_env_limit("CLOUDCPS_METADATA_MAX_MB", METADATA_MAX_MB, 0.001, 4096) * 2**20)


def fetch_timeout() -> float:
    """Seconds a whole URL fetch may take (``CLOUDCPS_FETCH_TIMEOUT``)."""
    return _env_limit("CLOUDCPS_FETCH_TIMEOUT", FETCH_TIMEOUT_S, 0.1, 3600)


def shown(value: Any, limit: int = 60) -> str:
    """``value`` for a one-line message: repr, control characters escaped, cut to ``limit``."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# ----------------------------------------------------------------------------- names and paths


def is_safe_name(name: str) -> bool:
    """Whether ``name`` can be a file name in an output folder as it is."""
    return (
        bool(name)
        and len(name) <= NAME_MAX
        and not name.startswith(".")
        and not name.endswith(" ")
        and not _UNSAFE.search(name)
    )


def safe_name(name: Any, fallback: str) -> str:
    """``name`` (from metadata) if it is a safe base name, else ``fallback`` (the product's own
    file or folder name) with unsafe characters replaced, else ``"scene"``."""
    if isinstance(name, str) and is_safe_name(name):
        return name
    cleaned = _UNSAFE.sub("_", fallback).lstrip(".").strip()[:NAME_MAX]
    return cleaned or "scene"


def member_name(value: Any, owner: str, where: str, field: str) -> str:
    """A file name a product's metadata gives for one of its own files: a plain base name (what
    the formats hold), refused when it has a folder part, ``..`` or is absolute."""
    name = text(value, owner, where, field, numbers=False)
    if not name or name in (".", "..") or _UNSAFE.search(name) or Path(name).is_absolute():
        raise InputError(
            f"{owner}: {field} {shown(name)} in {where} is not a file name inside the product "
            "(a path or a folder part); the metadata is damaged or hostile: download the product "
            "again"
        )
    return name


def inside(root: Path, path: Path, owner: str, where: str, field: str) -> Path:
    """``path`` if it resolves (links followed) inside ``root``, else a one-line refusal."""
    if not contains(root, path):
        raise InputError(
            f"{owner}: {field} in {where} names {path}, which resolves outside the product "
            f"({root.resolve()}); cloudcps reads only the product's own files: download the "
            "product again"
        )
    return path.resolve()


_LOCAL_HREF = re.compile(r"^(file:|/|\\|[A-Za-z]:[\\/])", re.IGNORECASE)


def remote_href(href: str, owner: str, field: str) -> None:
    """Refuse a local path (absolute, ``file://``, a GDAL ``/vsi...`` name) in an item read from
    a URL: a remote item may name remote assets only."""
    scheme = re.match(r"^([A-Za-z][A-Za-z0-9+.-]*)://", href)
    if _LOCAL_HREF.match(href) or (scheme and scheme.group(1).lower() not in _REMOTE):
        raise InputError(
            f"{owner}: {field} {shown(href)} is a local path, but the item was read from a URL; "
            "a remote item may name only http(s), s3 or gs assets (download the item and its "
            "assets to read local copies)"
        )


_REMOTE = frozenset({"http", "https", "s3", "gs"})


# ----------------------------------------------------------------------------- bounded reads


def too_big(size: int, owner: str, what: str) -> InputError:
    """``size`` is the declared size, or the bytes read so far (just over the limit)."""
    limit = metadata_max_bytes()
    shown_size = f"{size / 2**20:.1f} MiB" if size > limit + 1 else "larger"
    return InputError(
        f"{owner}: {what} is {shown_size}, more than the {limit / 2**20:g} MiB a "
        "metadata file may have; it is not a genuine product file (raise "
        "CLOUDCPS_METADATA_MAX_MB if it is)"
    )


def check_size(size: int, owner: str, what: str) -> None:
    """Refuse metadata of ``size`` bytes above :func:`metadata_max_bytes`, before reading it."""
    if size > metadata_max_bytes():
        raise too_big(size, owner, what)


def read_limited(stream: IO[bytes], owner: str, what: str) -> bytes:
    """At most :func:`metadata_max_bytes` of ``stream`` (refused when there is more)."""
    limit = metadata_max_bytes()
    data = stream.read(limit + 1)
    if len(data) > limit:
        raise too_big(len(data), owner, what)
    return data


def read_file_limited(path: Path, owner: str, what: str) -> bytes:
    check_size(path.stat().st_size, owner, what)
    with path.open("rb") as f:
        return read_limited(f, owner, what)


def decode(data: bytes, owner: str, what: str) -> str:
    """UTF-8 text of metadata, or one line naming the file and the first bad byte."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(
            f"{owner}: {what} is not UTF-8 text (byte {exc.object[exc.start]:#04x} at offset "
            f"{exc.start}); give the file as published (JSON and MTL are UTF-8)"
        ) from None


def fetch_url(url: str, what: str) -> bytes:
    """The body of ``url``: refused above :func:`metadata_max_bytes` (by its Content-Length, or
    while streaming) and when the whole fetch takes longer than :func:`fetch_timeout`."""
    import urllib.request

    limit, timeout = metadata_max_bytes(), fetch_timeout()
    deadline = time.monotonic() + timeout
    late = InputError(
        f"{what} {url} did not arrive within {timeout:g} s; check the server (or raise "
        "CLOUDCPS_FETCH_TIMEOUT)"
    )
    chunks: list[bytes] = []
    size = 0
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            length = response.headers.get("Content-Length")
            if length and length.isdigit():
                check_size(int(length), f"{what} {url}", "the reply")
            sock = _socket_of(response)
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise late
                if sock is not None:
                    sock.settimeout(left)
                chunk = response.read1(min(65536, limit + 1 - size))
                if not chunk:
                    break
                chunks.append(chunk)
                size += len(chunk)
                if size > limit:
                    raise too_big(size, f"{what} {url}", "the reply")
    except TimeoutError:
        raise late from None
    except OSError as exc:
        reason = getattr(exc, "reason", None) or exc
        raise InputError(
            f"{what} {url} cannot be fetched ({reason}); check the URL and the network"
        ) from None
    return b"".join(chunks)


# GDAL's HTTP options, each taken from the deadline unless the environment sets it
_GDAL_HTTP = ("GDAL_HTTP_TIMEOUT", "GDAL_HTTP_LOW_SPEED_TIME", "GDAL_HTTP_LOW_SPEED_LIMIT",
              "GDAL_HTTP_MAX_RETRY")  # fmt: skip


def gdal_http_options() -> dict[str, str]:
    """GDAL's options for its remote reads (``/vsicurl/``, ``/vsis3/``...: STAC assets, raster
    URLs), from the same deadline as :func:`fetch_url`: each HTTP request ends after
    :func:`fetch_timeout` seconds, also one stalled at under 1 byte/s that long, and is not
    retried. For ``rasterio.Env``; local reads ignore them. A ``GDAL_HTTP_*`` variable the
    user set in the environment wins."""
    seconds = str(max(1, math.ceil(fetch_timeout())))
    values = dict(zip(_GDAL_HTTP, (seconds, seconds, "1", "0"), strict=True))
    return {k: v for k, v in values.items() if k not in os.environ}


def _socket_of(response: Any) -> Any:
    """The socket under an http.client response, to tighten its timeout to the deadline."""
    fp = getattr(response, "fp", None)
    raw = getattr(fp, "raw", None)
    return getattr(raw, "_sock", None)


# ----------------------------------------------------------------------------- values


def group(doc: Any, key: str, owner: str, where: str) -> dict[str, Any]:
    """``doc[key]`` as an object (missing: empty), else one line naming the field."""
    value = doc.get(key, {}) if isinstance(doc, dict) else None
    if not isinstance(value, dict):
        raise InputError(
            f"{owner}: {key} in {where} is {type(value).__name__} {shown(value, 40)}, not a "
            "group of fields; the metadata is damaged: download the product again"
        )
    return value


def text(value: Any, owner: str, where: str, field: str, *, numbers: bool = True) -> str:
    """A string field (a number is taken as its text unless ``numbers`` is False), else one line
    naming the field."""
    kinds: tuple[type, ...] = (str, int, float) if numbers else (str,)
    if isinstance(value, bool) or not isinstance(value, kinds):
        raise InputError(
            f"{owner}: {field} in {where} is {type(value).__name__} {shown(value, 40)}, not "
            "text; the metadata is damaged: download the product again"
        )
    return str(value)


def objects(value: Any, owner: str, where: str, field: str) -> list[dict[str, Any]]:
    """A list of objects (missing: empty), else one line naming the field."""
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise InputError(
            f"{owner}: {field} in {where} is {shown(value, 40)}, not a list of objects; fix "
            "or regenerate the metadata"
        )
    return value


def number(
    value: Any,
    owner: str,
    where: str,
    field: str,
    lo: float,
    hi: float,
    *,
    nonzero: bool = False,
) -> float:
    """``value`` as a finite float in ``[lo, hi]`` (and not 0 with ``nonzero``), else one line
    naming the file, the field and the value."""
    try:
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise ValueError
        result = float(value)
    except (ValueError, OverflowError):
        raise InputError(
            f"{owner}: {field} in {where} is {shown(value, 40)}, not a number; the metadata is "
            "damaged: download the product again"
        ) from None
    if not (math.isfinite(result) and lo <= result <= hi) or (nonzero and result == 0):
        raise InputError(
            f"{owner}: {field} in {where} is {result:g}, outside the range of a genuine product "
            f"([{lo:g}, {hi:g}]{', not 0' if nonzero else ''}); the metadata is damaged: "
            "download the product again"
        )
    return result
