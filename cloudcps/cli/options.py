"""Options and helpers shared by the commands (defined once, reused as decorators)."""

from __future__ import annotations

import errno
import functools
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import click

from cloudcps.errors import CloudCPSError

F = TypeVar("F", bound=Callable[..., Any])


def _one_line(text: str) -> str:
    """The message of an error, on one line.

    An error raised in a DataLoader worker comes back as "Caught X in DataLoader worker process
    0. Original Traceback ...": its own message is the last line.
    """
    lines = [ln.strip() for ln in str(text).strip().splitlines() if ln.strip()]
    if not lines:
        return ""
    if "Original Traceback" in text:
        head, _, msg = lines[-1].partition(": ")
        return msg if msg and head.replace(".", "_").isidentifier() else lines[-1]
    return lines[0] if len(lines) == 1 else " ".join(lines[:2])[:400]


_ERRNO_FIX = {
    errno.ENOSPC: "free some space or choose another --out",
    errno.EDQUOT: "free some space or choose another --out",
    errno.EROFS: "the file system is read-only: choose another --out",
    errno.EACCES: "check the permissions, or choose another --out",
    errno.EPERM: "check the permissions, or choose another --out",
    errno.ENOENT: "check the path",
    errno.ENOTDIR: "a part of the path is a file, not a folder: check the path",
    errno.EISDIR: "it is a folder: give a file",
    errno.EEXIST: "it exists: choose another path",
    errno.ENOTEMPTY: "it is not empty: choose another path",
}


def explain(exc: BaseException) -> str:
    """One line for any error: what failed, on which file, and what to do."""
    if isinstance(exc, CloudCPSError):
        return _one_line(str(exc))
    if isinstance(exc, OSError) and exc.errno is not None:
        name = exc.filename if exc.filename is not None else ""
        what = f"{exc.strerror or 'error'}" + (f": {name}" if name else "")
        fix = _ERRNO_FIX.get(exc.errno, "check the file and the disk")
        return f"{what}; {fix}"
    try:
        from rasterio.errors import RasterioError

        from cloudcps.io import GDAL_ERRORS, gdal_message

        if isinstance(exc, (RasterioError, *GDAL_ERRORS)):
            return (
                f"GDAL could not read or write a raster ({gdal_message(exc)}); the file may be "
                "truncated or corrupt: check it with gdalinfo -checksum"
            )
    except ImportError:  # pragma: no cover
        pass
    if isinstance(exc, MemoryError):
        return "out of memory; use smaller --tile-size, --batch-size or --crop"
    first = _one_line(str(exc)) or type(exc).__name__
    return (
        f"unexpected error {type(exc).__name__}: {first} (run again with --debug for the "
        "traceback and report it)"
    )


def debug(ctx: click.Context | None = None) -> bool:
    ctx = ctx or click.get_current_context(silent=True)
    root = ctx.find_root() if ctx else None
    return bool(root and root.obj and root.obj.get("debug"))


def user_errors(func: F) -> F:
    """The error boundary of every command: any error becomes one line naming the file or option
    and the fix, with exit status 1 (``--debug`` shows the traceback instead)."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except KeyboardInterrupt:
            if debug():
                raise
            # 130 = 128 + SIGINT, as train (and shells) report an interrupted command
            click.echo("Error: interrupted; nothing half-written was left", err=True)
            sys.exit(130)
        except Exception as exc:
            if debug():
                raise
            raise click.ClickException(explain(exc)) from None

    return wrapper  # type: ignore[return-value]


def converter(parse: Callable[[str], Any]) -> Callable[[click.Context, click.Parameter, Any], Any]:
    """A click callback that converts with ``parse`` and reports ValueError as BadParameter."""

    def callback(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
        if value is None:
            return None
        try:
            return parse(value)
        except ValueError as exc:
            raise click.BadParameter(str(exc), ctx=ctx, param=param) from None

    return callback


def converter_multi(
    parse: Callable[[str], Any],
) -> Callable[[click.Context, click.Parameter, Any], Any]:
    """:func:`converter` for an option given several times (a tuple of values)."""
    one = converter(parse)

    def callback(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
        return tuple(one(ctx, param, v) for v in value or ())

    return callback


def quiet(ctx: click.Context) -> bool:
    root = ctx.find_root()
    return bool(root.obj and root.obj.get("quiet"))


overwrite_opt = click.option(
    "--overwrite",
    is_flag=True,
    help="Replace outputs that cloudcps wrote before (never without it; never an input or a "
    "file or folder cloudcps did not write).",
)
backend_opt = click.option(
    "--backend",
    type=click.Choice(["auto", "onnx", "torch"]),
    default="auto",
    show_default=True,
    help="How the networks run: onnx (ONNX Runtime, the CPU), torch (PyTorch: CUDA, MPS, CPU); "
    "auto = onnx on the CPU, torch on a GPU.",
)

device_opt = click.option(
    "--device",
    type=click.Choice(["auto", "cpu", "cuda", "mps"]),
    default=None,
    help="Where to run: auto picks cuda, then mps, then cpu.  [default: auto]",
)


def _band_files(text: str) -> Any:
    from cloudcps.scenes import parse_band_files

    return parse_band_files(text)


band_files_opt = click.option(
    "--band-files",
    "band_files",
    multiple=True,
    callback=converter_multi(_band_files),
    help="One scene as single-band files R,G,B[,NIR] on one grid (repeatable: one scene each).",
)


def finite_float(lo: float, hi: float, *, nonzero: bool = False) -> click.FloatRange:
    """A float option that must be finite, in ``[lo, hi]`` (and not 0 with ``nonzero``): NaN,
    inf and values that overflow float32 arithmetic are refused naming the option."""

    class Finite(click.FloatRange):
        name = "finite float"

        def convert(self, value: Any, param: click.Parameter | None, ctx: Any) -> Any:
            number = super().convert(value, param, ctx)
            if number != number:  # NaN slips through FloatRange's comparisons
                self.fail(f"{value!r} is not a number; give a finite one", param, ctx)
            if nonzero and number == 0:
                self.fail("0 would erase every value; give a non-zero factor", param, ctx)
            return number

    return Finite(min=lo, max=hi)


scale_opt = click.option(
    "--scale",
    default=None,
    type=finite_float(-1e6, 1e6, nonzero=True),
    help="Multiply the scenes' values by this before the stretch (e.g. 10000 for reflectance in "
    "0-1; the default model expects reflectance x 10000). Products (SAFE, Landsat, STAC) read "
    "their own scaling; this applies on top. tile records it; predict reads scenes with the "
    "tiles' value unless given.  [default: tile 1; predict the model's]",
)
offset_opt = click.option(
    "--offset",
    default=None,
    type=finite_float(-1e6, 1e6),
    help="Add this after --scale (a stacked Sentinel-2 L2A file of baseline 04.00+: -1000).  "
    "[default: tile 0; predict the model's]",
)
