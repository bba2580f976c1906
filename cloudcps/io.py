"""Small I/O helpers shared by the commands: opening rasters with clear errors, atomic outputs."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import socket
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import rasterio
from rasterio.errors import NotGeoreferencedWarning, RasterioError, RasterioIOError

from cloudcps.errors import CloudCPSError, InputError, OutputExistsError, first_line

try:  # GDAL's own errors (a block that fails to decode, a write that fails) are not RasterioError
    from rasterio._err import CPLE_BaseError

    GDAL_ERRORS: tuple[type[Exception], ...] = (CPLE_BaseError,)
except ImportError:  # pragma: no cover
    GDAL_ERRORS = ()


def gdal_message(exc: BaseException) -> str:
    """The most telling line of a rasterio/GDAL error and the errors chained to it (rasterio's
    "Read failed. See previous exception" hides GDAL's own message, which names the block)."""
    msgs: list[str] = []
    e: BaseException | None = exc
    while e is not None and len(msgs) < 5:
        text = str(e).strip().splitlines()[0] if str(e).strip() else ""
        if text:
            msgs.append(text)
        e = e.__cause__ or e.__context__
    useful = [m for m in msgs if "See previous exception" not in m]
    return (useful or msgs or [type(exc).__name__])[-1][:240]


@contextlib.contextmanager
def reading(path: str | os.PathLike[str], what: str = "scene") -> Iterator[None]:
    """Name the file when GDAL fails to decode it (a corrupt block after a good header)."""
    try:
        yield
    except (RasterioError, *GDAL_ERRORS) as exc:
        raise InputError(
            f"{what} {path} could not be read ({gdal_message(exc)}); the file may be truncated "
            "or corrupt: check it with gdalinfo -checksum"
        ) from None


def finite_integer_values(values: Any, path: str | os.PathLike[str], what: str) -> Any:
    """The mask of finite values of a float label or reference array (NaN means no label
    there); a fractional value is an error that names the file."""
    import numpy as np

    finite = np.isfinite(values)
    frac = finite & (values != np.round(values))
    if frac.any():
        raise InputError(
            f"{what} {path} holds non-integer values (e.g. {float(values[frac][0]):g}); it "
            "should hold class ids or label codes: round or re-export it as integers"
        )
    return finite


_VSI_PREFIX = re.compile(r"^/vsi[a-z0-9_]+/")
_URL_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]+):(/+)(.*)$", re.S)
# schemes whose next part is a host or bucket: a Path turns "s3://b/k" into "s3:/b/k"
_REMOTE_SCHEMES = frozenset(
    {"http", "https", "ftp", "s3", "gs", "az", "azure", "oss", "swift", "adl", "abfs", "wasb"}
)


def is_virtual_path(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` names a raster through GDAL's virtual file systems (``/vsizip/``,
    ``/vsicurl/``, ``/vsis3/``, ...) or a URL-style name (``zip+file://``, ``s3://``, ...)
    rather than a plain file; such a name is left to GDAL to resolve."""
    s = os.fspath(path)
    return bool(_VSI_PREFIX.match(s) or _URL_SCHEME.match(s))


def gdal_name(path: str | os.PathLike[str]) -> str:
    """The name to hand GDAL for ``path``, undoing what :class:`pathlib.Path` does to virtual
    names (it collapses ``//``: ``/vsizip//abs/a.zip`` becomes ``/vsizip/abs/a.zip``, a path
    relative to the working folder, and ``https://host`` becomes ``https:/host``)."""
    s = os.fspath(path)
    m = _VSI_PREFIX.match(s)
    if m:
        rest = s[m.end() :]
        url = _URL_SCHEME.match(rest)
        if url and url.group(2) == "/" and url.group(1).lower() in _REMOTE_SCHEMES:
            return f"{m.group(0)}{url.group(1)}://{url.group(3)}"
        if rest and not rest.startswith("/") and not url:
            parts = rest.split("/")
            for i in range(1, len(parts) + 1):  # the archive (or file) the name starts with
                head = "/".join(parts[:i])
                if Path(head).is_file():
                    return s
                if Path("/" + head).is_file():
                    return f"{m.group(0)}/{rest}"
        return s
    url = _URL_SCHEME.match(s)
    if url and url.group(2) == "/":
        schemes = url.group(1).lower().split("+")
        if schemes[-1] in _REMOTE_SCHEMES:
            return f"{url.group(1)}://{url.group(3)}"
    return s


def open_raster(path: str | os.PathLike[str], what: str = "raster") -> rasterio.DatasetReader:
    """Open ``path`` with rasterio, turning GDAL's errors into one-line :class:`InputError`.

    A plain path must exist; a GDAL virtual name (``/vsizip/a.zip/b.tif``, ``zip+file://``,
    ``/vsicurl/https://...``) is handed to GDAL as it is."""
    virtual = is_virtual_path(path)
    p = Path(path)
    if not virtual:
        if not p.exists():
            raise InputError(f"{what} {p} does not exist; check the path")
        if p.is_dir():
            raise InputError(f"{what} {p} is a folder, not a raster file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            return rasterio.open(gdal_name(path) if virtual else p)
    except RasterioIOError as exc:
        detail = first_line(exc, None, "unreadable")
        if virtual:
            raise InputError(
                f"{what} {gdal_name(path)} could not be opened through GDAL's virtual file "
                f"systems ({detail}); check the archive or URL and the path inside it"
            ) from None
        raise InputError(
            f"{what} {p} is not a readable raster ({detail}); give a GeoTIFF or another "
            "GDAL-readable file"
        ) from None


def _is_nonempty(path: Path) -> bool:
    if path.is_dir():
        return any(path.iterdir())
    return path.exists()


def check_writable(path: Path, overwrite: bool, option: str = "--out") -> None:
    """Refuse an existing non-empty output unless ``overwrite`` is set."""
    if _is_nonempty(path) and not overwrite:
        raise OutputExistsError(
            f"{option} {path} already exists; choose another path or pass --overwrite"
        )


_HOST = socket.gethostname().replace("-", "_") or "host"


# What cloudcps writes into an output folder of each kind: --overwrite replaces such a folder only
# when it holds nothing else (and its marker file), so it never deletes inputs or foreign files.
OUTPUT_LAYOUTS: dict[str, tuple[str, frozenset[str]]] = {
    "tiles": ("manifest.json", frozenset({"manifest.json", "images", "labels", "valid", "splits"})),
    "report": (
        "report.json",
        frozenset({"report.json", "report.md", "confusion.png", "samples.png"}),
    ),
    "suggest": (
        "suggest.json",
        frozenset(
            {"suggest.json", "suggestions.csv", "suggestions.geojson", "suggestions.png", "labels"}
        ),
    ),
}


def contains(folder: Path, path: Path) -> bool:
    """Whether ``path`` is ``folder`` or lies in it (symlinks resolved)."""
    f, p = Path(folder).resolve(), Path(path).resolve()
    return f == p or f in p.parents


def check_folder_path(path: Path, option: str = "--out") -> None:
    """Refuse an output folder that is a file or lies under one."""
    if path.exists() and not path.is_dir():
        raise InputError(f"{option} {path} is a file; give a folder")
    for parent in path.absolute().parents:
        if parent.exists():
            if not parent.is_dir():
                raise InputError(f"{option} {path}: {parent} is a file, not a folder")
            break


def check_out_dir(
    path: Path, overwrite: bool, kind: str, inputs: list[Path], option: str = "--out"
) -> None:
    """Refuse an output folder that is a file, lies under a file, holds (or is) an input, or
    already exists without ``overwrite``; with ``overwrite`` accept only a folder that cloudcps
    wrote (the layout of ``kind`` and nothing else)."""
    path = Path(path)
    check_folder_path(path, option)
    for inp in inputs:
        if contains(path, Path(inp)):
            raise InputError(
                f"{option} {path} holds the input {inp}; cloudcps never replaces its inputs: "
                f"choose another {option}"
            )
    if not _is_nonempty(path):
        return
    if not overwrite:
        raise OutputExistsError(
            f"{option} {path} already exists; choose another path or pass --overwrite"
        )
    marker, allowed = OUTPUT_LAYOUTS[kind]
    foreign = sorted(e.name for e in path.iterdir() if e.name not in allowed)
    if foreign or not (path / marker).is_file():
        what = f"holds {foreign[0]!r}, which" if foreign else f"has no {marker}, so it"
        raise InputError(
            f"{option} {path} {what} cloudcps did not write; --overwrite only replaces a "
            f"folder cloudcps wrote: choose another {option}"
        )
    check_owned(path, kind, option)


# The split lists a tile manifest written before manifests listed them ("split_files") owns.
STANDARD_SPLIT_FILES = ("splits/labeled.txt", "splits/unlabeled.txt", "splits/val.txt")
# What a report folder written before report.json listed its files ("written_files") owns.
STANDARD_REPORT_FILES = ("report.json", "report.md", "confusion.png", "samples.png")


def _record(path: Path, option: str, folder: Path) -> dict[str, Any]:
    """The marker file (manifest or report) of a folder cloudcps wrote, or a one-line refusal."""
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(
            f"{option} {folder}: {path.name} cannot be read ({first_line(exc, 120)}), so what "
            f"cloudcps wrote there is unknown; --overwrite only replaces files cloudcps wrote: "
            f"remove the folder yourself or choose another {option}"
        ) from None
    if not isinstance(data, dict):
        data = {}
    return data


def owned_files(path: Path, kind: str, option: str = "--out") -> set[str]:
    """The files (relative POSIX paths) of the output folder ``path`` that cloudcps wrote, as its
    own record says: a tile folder's manifest (its tiles' image, label and valid files and its
    split lists), a report's ``report.json`` (the files it lists)."""
    path = Path(path)
    if kind == "tiles":
        manifest = _record(path / "manifest.json", option, path)
        tiles = manifest.get("tiles")
        if manifest.get("format") != "cloudcps-tiles" or not isinstance(tiles, list):
            raise InputError(
                f"{option} {path}: manifest.json is not a cloudcps tile manifest; --overwrite "
                f"only replaces a tile folder cloudcps wrote: choose another {option}"
            )
        owned = {"manifest.json"}
        for t in tiles:
            if isinstance(t, dict):
                owned.update(
                    str(t[k]) for k in ("image", "label", "valid_mask") if isinstance(t.get(k), str)
                )
        splits = manifest.get("split_files")
        if isinstance(splits, list):
            owned.update(str(f) for f in splits if isinstance(f, str))
        else:
            owned.update(STANDARD_SPLIT_FILES)
        return owned
    marker = OUTPUT_LAYOUTS[kind][0]  # a report.json or suggest.json that lists its files
    report = _record(path / marker, option, path)
    if "cloudcps_version" not in report:
        raise InputError(
            f"{option} {path}: {marker} was not written by cloudcps (it has no "
            f"cloudcps_version); --overwrite only replaces a {kind} folder cloudcps wrote: "
            f"choose another {option}"
        )
    files = report.get("written_files")
    listed = [str(f) for f in files if isinstance(f, str)] if isinstance(files, list) else []
    default = STANDARD_REPORT_FILES if kind == "report" else ()
    return {marker, *(listed if isinstance(files, list) else default)}


def check_owned(path: Path, kind: str, option: str = "--out") -> None:
    """Refuse to replace the output folder ``path`` when it holds anything its record does not
    list (:func:`owned_files`): a user's own split list, a README among the images."""
    path = Path(path)
    owned = owned_files(path, kind, option)
    dirs = {str(Path(f).parent.as_posix()) for f in owned} | set(OUTPUT_LAYOUTS[kind][1])
    for root, subdirs, files in os.walk(path):
        subdirs.sort()  # the first stranger named is the same every time
        base = Path(root).relative_to(path)
        entries = [(d, True) for d in subdirs] + [(f, False) for f in files]
        for name, is_dir in sorted(entries):
            rel = (base / name).as_posix()
            full = Path(root) / name
            if (rel in dirs and not full.is_symlink()) if is_dir else rel in owned:
                continue  # a folder cloudcps made, or a file its record lists (or a link there)
            record = OUTPUT_LAYOUTS[kind][0]
            raise InputError(
                f"{option} {path} holds {rel}, which cloudcps did not write (its {record} does "
                f"not list it); --overwrite only replaces what cloudcps wrote: move it away or "
                f"choose another {option}"
            )


def written_by_cloudcps(path: Path) -> bool:
    """Whether an existing file is a cloudcps output (a mask, probability raster or report)."""
    suffix = path.suffix.lower()
    try:
        if suffix == ".json":
            data = json.loads(path.read_text())
            return isinstance(data, dict) and "cloudcps_version" in data
        if suffix in (".tif", ".tiff"):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                with rasterio.open(gdal_name(path) if is_virtual_path(path) else path) as src:
                    tags = src.tags()
            return str(tags.get("SOFTWARE", "")).startswith("cloudcps") or (
                "CLASSES" in tags and tags.get("SCALE") == "probability = value / 255"
            )
    except (OSError, ValueError, RasterioIOError):
        return False
    return False


def check_output_file(
    path: Path, overwrite: bool, inputs: list[Path], option: str = "--out"
) -> None:
    """Refuse an output file that is an input, a folder, or exists (without ``overwrite``, or
    with it when cloudcps did not write it)."""
    path = Path(path)
    for inp in inputs:
        same = path.exists() and Path(inp).exists() and os.path.samefile(path, inp)
        if same or path.resolve() == Path(inp).resolve():
            raise InputError(
                f"{option} {path} is the input {inp}; cloudcps never replaces its inputs: "
                f"choose another {option}"
            )
    if path.is_dir():
        raise InputError(f"{option} {path} is a folder; give a file name")
    if not path.exists():
        return
    if not overwrite:
        raise OutputExistsError(
            f"{option} {path} already exists; choose another path or pass --overwrite"
        )
    if not written_by_cloudcps(path):
        raise InputError(
            f"{option} {path} exists and was not written by cloudcps; --overwrite only replaces "
            "cloudcps's own outputs: choose another path"
        )


_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


@contextlib.contextmanager
def writing(out: Path, option: str = "--out") -> Iterator[None]:
    """Name the output when writing it fails: a real ENOSPC names one of the hidden temporary
    files (or nothing at all), and GDAL reports a full disk as "write error at scanline", which
    reads like a damaged input; with little space left, that is a full disk too."""
    try:
        yield
    except (RasterioError, *GDAL_ERRORS) as exc:  # before OSError: RasterioIOError is one
        folder = out.parent if str(out.parent) else Path(".")
        try:
            free: int | None = shutil.disk_usage(folder).free
        except OSError:
            free = None
        if free is not None and free < LOW_SPACE:
            raise CloudCPSError(
                f"no space left on the device while writing {option} {out} ({free >> 10} KiB "
                f"free in {folder}); free some space or choose another {option}"
            ) from None
        raise CloudCPSError(
            f"could not write {option} {out} ({gdal_message(exc)}); check the disk, or choose "
            f"another {option}"
        ) from None
    except OSError as exc:
        if exc.errno not in _DISK_FULL:
            raise
        raise CloudCPSError(
            f"no space left on the device while writing {option} {out} "
            f"({exc.strerror or 'disk full'}); free some space or choose another {option}"
        ) from None


LOW_SPACE = 16 << 20  # bytes: a GDAL write error with less than this left means a full disk


def _tmp_sibling(path: Path) -> Path:
    """A hidden temporary name beside ``path`` that records the host and process writing it."""
    return path.with_name(f".{path.name}.tmp-{_HOST}-{os.getpid()}-{uuid.uuid4().hex[:8]}")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temps(paths: list[Path]) -> int:
    """Remove temporary files (and their ``.stage``/``.raw`` companions) left beside ``paths`` by
    processes of this host that no longer run (killed with SIGKILL, or a power cut)."""
    removed = 0
    for path in paths:
        if not path.parent.is_dir():
            continue
        prefix = f".{path.name}.tmp-{_HOST}-"
        for tmp in path.parent.glob(f"{glob_escape(prefix)}*"):
            try:
                pid = int(tmp.name[len(prefix) :].split("-")[0])
            except ValueError:
                continue
            if pid != os.getpid() and not _pid_alive(pid):
                if tmp.is_dir():
                    shutil.rmtree(tmp, ignore_errors=True)
                else:
                    tmp.unlink(missing_ok=True)
                removed += 1
    return removed


def glob_escape(name: str) -> str:
    return "".join(f"[{c}]" if c in "*?[" else c for c in name)


def _fsync(path: Path) -> None:
    """Flush a finished file to disk before it is published (a crash then leaves either the
    old state or the whole new file, never a renamed but empty one)."""
    if path.is_file():
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _raced(path: Path) -> OutputExistsError:
    return OutputExistsError(
        f"{path} was written by another run while this one worked; it was left as it is "
        "(choose another path, or pass --overwrite)"
    )


def _publish_new(tmp: Path, final: Path) -> None:
    """Move the file ``tmp`` to ``final`` only if ``final`` does not exist (no clobbering: of two
    runs writing the same output, the later one fails instead of replacing the other's)."""
    try:
        os.link(tmp, final)
    except FileExistsError:
        raise _raced(final) from None
    except OSError:  # no hard links on this file system: claim the name, then move onto it
        try:
            fd = os.open(final, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            raise _raced(final) from None
        os.close(fd)
        os.replace(tmp, final)
        return
    tmp.unlink()


def _replace(tmp: Path, final: Path) -> None:
    """Move ``tmp`` to ``final``, replacing an existing file or folder."""
    if final.is_dir() and not final.is_symlink():
        trash = _tmp_sibling(final)
        final.rename(trash)
        tmp.rename(final)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(tmp, final)


@contextlib.contextmanager
def atomic_dir(path: Path, overwrite: bool = False, option: str = "--out") -> Iterator[Path]:
    """Yield a temporary folder beside ``path`` that becomes ``path`` when the block succeeds.

    On any exception the temporary folder is removed and ``path`` is left as it was.
    """
    path = Path(path)
    check_writable(path, overwrite, option)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_sibling(path)
    tmp.mkdir()
    try:
        yield tmp
        if overwrite:
            _replace(tmp, path)
        else:
            try:  # renaming onto a missing or empty folder works; onto a non-empty one fails
                os.rename(tmp, path)
            except OSError:
                raise _raced(path) from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextlib.contextmanager
def atomic_file(path: Path, overwrite: bool = False, option: str = "--out") -> Iterator[Path]:
    """Yield a temporary file name beside ``path``, renamed to ``path`` when the block succeeds."""
    path = Path(path)
    check_writable(path, overwrite, option)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_sibling(path)
    try:
        yield tmp
        _fsync(tmp)
        if overwrite or path.is_dir():
            _replace(tmp, path)
        else:
            _publish_new(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def write_json(path: Path, obj: Any) -> None:
    """Write ``obj`` as indented JSON through a temporary file."""
    tmp = _tmp_sibling(path)
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    os.replace(tmp, path)


def alpha_is_data(src: rasterio.DatasetReader, bands: list[int] | tuple[int, ...]) -> bool:
    """Whether GDAL flags one of ``bands`` as alpha although we read it as data.

    A 4-band uint8 GeoTIFF is often written as RGBA, so GDAL turns its 4th band (our NIR) into a
    transparency mask and every NIR value of 0 would read as nodata.
    """
    from rasterio.enums import ColorInterp

    return any(src.colorinterp[b - 1] == ColorInterp.alpha for b in bands)


def read_valid_mask(
    src: rasterio.DatasetReader,
    bands: list[int] | tuple[int, ...],
    window: Any = None,
    out_shape: tuple[int, int] | None = None,
) -> Any:
    """Boolean (H, W) mask of pixels valid in every band of ``bands`` (nodata value or mask)."""
    import numpy as np
    from rasterio.enums import Resampling

    kw: dict[str, Any] = {"window": window}
    if out_shape is not None:
        kw.update(out_shape=(len(bands), *out_shape), resampling=Resampling.nearest)
    if alpha_is_data(src, bands):
        if src.nodata is None:
            shape = out_shape or ((int(window.height), int(window.width)) if window else src.shape)
            return np.ones(shape, dtype=bool)
        return np.all(src.read(list(bands), **kw) != src.nodata, axis=0)
    return np.all(src.read_masks(list(bands), **kw) > 0, axis=0)
