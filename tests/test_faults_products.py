"""Products as an attack surface (issue 24): metadata is untrusted input. Names from metadata
never leave --out or the tile folder, paths a product names stay inside it, an item read from a
URL never reads local files, every metadata read is bounded in size and time, and every malformed
or absurd field is one line naming the file, the field and the value."""

from __future__ import annotations

import http.server
import json
import re
import shutil
import subprocess
import sys
import tarfile
import threading
import time
import warnings
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
from affine import Affine

from cloudcps.errors import InputError
from cloudcps.scenes import open_scene
from tests.conftest import run, write_raster
from tests.products import Product, band_files, landsat_c2, sentinel2_safe, stac_item
from tests.test_faults import fails, snapshot


def refused(path: Path | str, *words: str, **kw: Any) -> str:
    """``open_scene(path)`` fails with one line holding ``words``."""
    with pytest.raises(InputError) as exc:
        open_scene(path, **kw).close()
    msg = str(exc.value)
    assert "\n" not in msg, msg
    for w in words:
        assert w in msg, msg
    return msg


def edit_mtl(product: Product, edit: Callable[[str], str]) -> Path:
    """Rewrite the product's _MTL.txt through ``edit`` (the JSON twin goes: the text is read)."""
    mtl = product.files["mtl"]
    mtl.write_text(edit(mtl.read_text()))
    product.files["mtl_json"].unlink()
    return mtl


def mtl_json(product: Product, edit: Callable[[dict[str, Any]], None]) -> Path:
    """Replace the product's MTL by its JSON form, changed by ``edit`` (on the parsed JSON)."""
    path = product.files["mtl_json"]
    doc = json.loads(path.read_text())
    edit(doc["LANDSAT_METADATA_FILE"])
    path.write_text(json.dumps(doc))
    product.files["mtl"].unlink()
    return path


def set_field(text: str, key: str, value: str) -> str:
    out, n = re.subn(rf"(?m)^(\s*{key} = ).*$", lambda m: m.group(1) + value, text)
    assert n, key
    return out


def edit_item(product: Product, edit: Callable[[dict[str, Any]], None]) -> Path:
    item = json.loads(product.path.read_text())
    edit(item)
    product.path.write_text(json.dumps(item))
    return product.path


# ----------------------------------------------------------------------------- 1, 2, 21: names


@pytest.mark.parametrize(
    "product_id", ["../escaped", "/tmp/cloudcps-abs-escape", ".", "..", "a\nb", "x\x00y"]
)
def test_a_hostile_product_id_falls_back_to_the_folder_name(
    tmp_path: Path, product_id: str
) -> None:
    product = landsat_c2(tmp_path / "dl", "L2SP")
    mtl_json(product, lambda m: m["PRODUCT_CONTENTS"].update(LANDSAT_PRODUCT_ID=product_id))
    with open_scene(product.path) as scene:
        assert scene.product_id == product.path.name


def test_a_stac_id_is_reduced_and_a_foreign_product_uri_is_named(tmp_path: Path) -> None:
    s2 = sentinel2_safe(tmp_path / "s2", "L2A")
    xml = s2.files["xml"]
    xml.write_text(xml.read_text().replace(f"<PRODUCT_URI>{s2.product_id}", "<PRODUCT_URI>../x"))
    msg = refused(s2.path, "PRODUCT_URI '../x", "MTD_MSIL2A.xml", "does not match")
    assert "incomplete" not in msg  # the jp2 files are there (issue item 23)
    item = stac_item(tmp_path / "stac")
    edit_item(item, lambda i: i.update(id="../../escaped"))
    with open_scene(item.path) as scene:
        assert scene.product_id == item.path.stem


def test_predict_and_tile_never_write_outside_their_folder(tiny_run: Path, tmp_path: Path) -> None:
    product = landsat_c2(tmp_path / "d" / "dl", "L2SP")
    mtl_json(product, lambda m: m["PRODUCT_CONTENTS"].update(LANDSAT_PRODUCT_ID="../escaped"))
    before = snapshot(tmp_path)
    r = run("predict", product.path, "--model", tiny_run, "--out", tmp_path / "d" / "out")
    assert r.exit_code == 0, r.output
    r = run("tile", product.path, "--tile-size", "64", "--out", tmp_path / "d" / "tiles")
    assert r.exit_code == 0, r.output
    new = set(snapshot(tmp_path)) - set(before)
    assert new and all(p.startswith(("d/out/", "d/tiles/")) for p in new), sorted(new)
    assert (tmp_path / "d" / "out" / f"{product.path.name}_mask.tif").is_file()
    manifest = json.loads((tmp_path / "d" / "tiles" / "manifest.json").read_text())
    assert all(t["scene"] == product.path.name for t in manifest["tiles"])


# ----------------------------------------------------------------------------- 3: band paths


@pytest.mark.parametrize("name", ["../outside/x.tif", "/etc/hostname", "sub/x.tif", "."])
def test_a_landsat_band_outside_the_product_is_refused(tmp_path: Path, name: str) -> None:
    product = landsat_c2(tmp_path / "dl", "L2SP")
    outside = tmp_path / "dl" / "outside"
    outside.mkdir()
    shutil.copy(product.path / f"{product.product_id}_SR_B4.TIF", outside / "x.tif")
    mtl_json(product, lambda m: m["PRODUCT_CONTENTS"].update(FILE_NAME_BAND_4=name))
    refused(product.path, "FILE_NAME_BAND_4", "not a file name inside the product")


def test_a_landsat_band_linked_outside_the_product_is_refused(tmp_path: Path) -> None:
    product = landsat_c2(tmp_path / "dl", "L2SP")
    band = product.path / f"{product.product_id}_SR_B4.TIF"
    moved = tmp_path / "elsewhere.tif"
    band.rename(moved)
    band.symlink_to(moved)
    refused(product.path, "FILE_NAME_BAND_4", "outside the product")


def test_a_sentinel2_band_linked_outside_the_product_is_refused(tmp_path: Path) -> None:
    """GDAL's reader builds band paths from the granule folder; a link there must not lead out."""
    s2 = sentinel2_safe(tmp_path / "dl", "L2A")
    band = next(s2.path.glob("GRANULE/*/IMG_DATA/R10m/*_B04_10m.jp2"))
    moved = tmp_path / "elsewhere.jp2"
    band.rename(moved)
    band.symlink_to(moved)
    refused(s2.path, "IMAGE_FILE", "outside the product")


# ----------------------------------------------------------------------------- 4, 7, 8: URLs


@contextmanager
def serving(
    routes: dict[str, Callable[[http.server.BaseHTTPRequestHandler], None]],
) -> Iterator[str]:
    """An HTTP server in a thread answering ``routes`` (path -> handler); its base URL."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            handler = routes.get(self.path)
            if handler is None:
                self.send_error(404)
                return
            with suppress(BrokenPipeError, ConnectionResetError):
                handler(self)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def send(body: bytes, length: bool = True) -> Callable[[http.server.BaseHTTPRequestHandler], None]:
    def handler(h: http.server.BaseHTTPRequestHandler) -> None:
        h.send_response(200)
        h.send_header("Content-Type", "application/json")
        if length:
            h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        for i in range(0, len(body), 65536):
            h.wfile.write(body[i : i + 65536])

    return handler


@pytest.fixture
def no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY"):
        monkeypatch.delenv(var, raising=False)
    for var in ("NO_PROXY", "no_proxy"):
        monkeypatch.setenv(var, "127.0.0.1,localhost")


@pytest.mark.usefixtures("no_proxy")
@pytest.mark.parametrize("href", ["file:///etc/hostname", "FILE:/etc/hostname", "ftp://h/x.tif"])
def test_an_item_from_a_url_never_names_local_files(tmp_path: Path, href: str) -> None:
    item = stac_item(tmp_path / "stac")
    edit_item(item, lambda i: i["assets"]["red"].update(href=href))
    with serving({"/item": send(item.path.read_bytes())}) as base:
        refused(f"{base}/item", "href of asset 'red'", "local path")


def test_an_absolute_href_of_a_remote_item_is_on_its_host() -> None:
    from cloudcps.scenes.stac import _gdal_href

    got = _gdal_href("/abs/path.tif", "http://h:8/items/a", "item", "href")
    assert got == "/vsicurl/http://h:8/abs/path.tif"
    with pytest.raises(InputError, match="local path"):
        _gdal_href("file:///abs/path.tif", "http://h:8/items/a", "item", "href")


def test_a_relative_href_of_a_local_item_stays_in_its_folder(tmp_path: Path) -> None:
    item = stac_item(tmp_path / "stac")
    (tmp_path / "B04.tif").write_bytes((tmp_path / "stac" / "cogs" / "B04.tif").read_bytes())
    edit_item(item, lambda i: i["assets"]["red"].update(href="../B04.tif"))
    refused(item.path, "href of asset 'red'", "outside the product")


@pytest.mark.usefixtures("no_proxy")
@pytest.mark.parametrize("length", [True, False])
def test_a_huge_url_reply_is_refused_while_streaming(
    monkeypatch: pytest.MonkeyPatch, length: bool
) -> None:
    monkeypatch.setenv("CLOUDCPS_METADATA_MAX_MB", "1")
    body = b"{" + b" " * (3 * 2**20) + b"}"
    with serving({"/big": send(body, length)}) as base:
        refused(f"{base}/big", "STAC item", "more than the 1 MiB", "CLOUDCPS_METADATA_MAX_MB")


@pytest.mark.usefixtures("no_proxy")
def test_a_trickling_url_hits_the_overall_deadline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLOUDCPS_FETCH_TIMEOUT", "1")

    def trickle(h: http.server.BaseHTTPRequestHandler) -> None:
        h.send_response(200)
        h.end_headers()
        for _ in range(40):  # one byte every 0.2 s: each read is quick, the whole is not
            h.wfile.write(b" ")
            h.wfile.flush()
            time.sleep(0.2)

    with serving({"/slow": trickle}) as base:
        start = time.monotonic()
        refused(f"{base}/slow", "did not arrive within 1 s", "CLOUDCPS_FETCH_TIMEOUT")
        assert time.monotonic() - start < 3


# GDAL holds the GIL while it reads, so the server of a raster GDAL fetches runs in its own process
RASTER_SERVER = """
import http.server, sys, time
files = {"/item": sys.argv[1], "/slow.tif": sys.argv[2]}  # read when asked for
pause = float(sys.argv[3])

class Handler(http.server.BaseHTTPRequestHandler):
    def do_HEAD(self):
        self.do_GET()

    def do_GET(self):
        if self.path not in files:
            self.send_error(404)
            return
        body = open(files[self.path], "rb").read()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command == "HEAD":
            return
        try:
            if self.path == "/item":
                self.wfile.write(body)
                return
            for b in body[:10]:  # one byte every `pause` s, then the connection ends
                self.wfile.write(bytes([b]))
                self.wfile.flush()
                time.sleep(pause)
        except OSError:
            pass

    def log_message(self, *args):
        pass

server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
server.daemon_threads = True
print(server.server_address[1], flush=True)
server.serve_forever()
"""


@pytest.mark.usefixtures("no_proxy")
def test_a_trickling_asset_hits_the_deadline(
    tiny_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """GDAL's reads of a remote item's assets have the deadline of the item's fetch (item 8): a
    .tif sent one byte every 3 s fails after CLOUDCPS_FETCH_TIMEOUT, not after 30 s."""
    monkeypatch.setenv("CLOUDCPS_FETCH_TIMEOUT", "1")
    for var in ("GDAL_HTTP_TIMEOUT", "GDAL_HTTP_LOW_SPEED_TIME", "GDAL_HTTP_MAX_RETRY"):
        monkeypatch.delenv(var, raising=False)
    item = stac_item(tmp_path / "stac")
    script = tmp_path / "server.py"
    script.write_text(RASTER_SERVER)
    cog = tmp_path / "stac" / "cogs" / "B04.tif"
    args = [sys.executable, script, item.path, cog, "3"]
    server = subprocess.Popen(args, stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        base = f"http://127.0.0.1:{server.stdout.readline().strip()}"
        edit_item(item, lambda i: [a.update(href=f"{base}/slow.tif") for a in i["assets"].values()])
        start = time.monotonic()
        msg = fails(tmp_path, ["predict", f"{base}/item", "--model", tiny_run,
                               "--out", tmp_path / "o"], "did not arrive within 1 s")  # fmt: skip
        assert time.monotonic() - start < 6, msg
        assert "band red" in msg and "CLOUDCPS_FETCH_TIMEOUT" in msg, msg
    finally:
        server.kill()
        server.wait()


def test_a_bad_limit_in_the_environment_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLOUDCPS_FETCH_TIMEOUT", "nan")
    with pytest.raises(InputError, match="CLOUDCPS_FETCH_TIMEOUT='nan'"):
        open_scene("http://127.0.0.1:9/item")


# ----------------------------------------------------------------------------- 5, 6: bombs


@pytest.mark.parametrize("kind", ["landsat", "sentinel2"])
def test_a_huge_metadata_file_is_refused_unread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    """Items 5, 6: an MTL padded to 2 MiB in a .tar.gz, an MTD XML padded so in a zip (each
    archive well under 1 MiB), and the same files unpacked, against a 1 MiB limit."""
    monkeypatch.setenv("CLOUDCPS_METADATA_MAX_MB", "1")
    if kind == "landsat":
        product = landsat_c2(tmp_path / "dl", "L2SP")
        meta = unpacked = product.files["mtl"]  # the MTL given as a file
        bomb, members, root = tmp_path / "bomb.tar.gz", [meta], meta.parent
    else:
        product = sentinel2_safe(tmp_path / "dl", "L2A")
        meta, unpacked = product.files["xml"], product.path
        bomb, members, root = tmp_path / "bomb.zip", sorted(unpacked.rglob("*")), unpacked.parent
    meta.write_text(meta.read_text() + " " * (2 * 2**20))
    if bomb.suffix == ".zip":
        with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as zf:
            for f in members:
                zf.write(f, f.relative_to(root).as_posix())
    else:
        with tarfile.open(bomb, "w:gz") as tf:
            for f in members:
                tf.add(f, f.relative_to(root).as_posix())
    assert bomb.stat().st_size < 2**20
    refused(bomb, meta.name, "more than the 1 MiB")
    refused(unpacked, meta.name, "more than the 1 MiB")


# ----------------------------------------------------------------------------- 9: malformed MTL


@pytest.mark.parametrize(
    ("edit", "words"),
    [
        (lambda m: m.update(PRODUCT_CONTENTS=["x"]), ("PRODUCT_CONTENTS", "not a group")),
        (lambda m: m.update(IMAGE_ATTRIBUTES="x"), ("IMAGE_ATTRIBUTES", "not a group")),
        (lambda m: m["PRODUCT_CONTENTS"].update(FILE_NAME_BAND_4=["a"]), ("FILE_NAME_BAND_4",)),
        (lambda m: m["PRODUCT_CONTENTS"].update(FILE_NAME_BAND_4=7), ("FILE_NAME_BAND_4",)),
        (lambda m: m["PRODUCT_CONTENTS"].update(PROCESSING_LEVEL={}), ("PROCESSING_LEVEL",)),
    ],
)
def test_a_malformed_mtl_json_names_the_field(
    tmp_path: Path, edit: Callable[[dict[str, Any]], None], words: tuple[str, ...]
) -> None:
    product = landsat_c2(tmp_path / "dl", "L2SP")
    path = mtl_json(product, edit)
    refused(product.path, path.name, *words)


def test_a_deeply_nested_mtl_json_is_one_line(tmp_path: Path) -> None:
    product = landsat_c2(tmp_path / "dl", "L2SP")
    path = mtl_json(product, lambda m: None)
    path.write_text("[" * 100_000 + "]" * 100_000)
    refused(product.path, path.name, "nested too deeply")


@pytest.mark.parametrize(
    ("level", "key", "value"),
    [
        ("L1TP", "SUN_ELEVATION", "inf"),
        ("L1TP", "SUN_ELEVATION", "nan"),
        ("L1TP", "SUN_ELEVATION", "1e-300"),
        ("L1TP", "SUN_ELEVATION", "abc"),
        ("L2SP", "REFLECTANCE_MULT_BAND_4", "nan"),
        ("L2SP", "REFLECTANCE_MULT_BAND_4", "inf"),
        ("L2SP", "REFLECTANCE_MULT_BAND_4", "1e300"),
        ("L2SP", "REFLECTANCE_ADD_BAND_3", "nan"),
        ("L2SP", "REFLECTANCE_ADD_BAND_3", "1e300"),
    ],
)
def test_absurd_landsat_scaling_names_the_field_and_value(
    tmp_path: Path, level: str, key: str, value: str
) -> None:
    product = landsat_c2(tmp_path / "dl", level)
    mtl = edit_mtl(product, lambda t: set_field(t, key, value))
    msg = refused(product.path, mtl.name, key)
    assert value.replace("1e300", "1e+300") in msg, msg


def test_a_non_utf8_mtl_is_one_line(tmp_path: Path) -> None:
    product = landsat_c2(tmp_path / "dl", "L2SP")
    mtl = product.files["mtl"]
    mtl.write_bytes(mtl.read_bytes().replace(b"Image courtesy", b"Image \xff courtesy"))
    product.files["mtl_json"].unlink()
    refused(product.path, mtl.name, "not UTF-8")


# ----------------------------------------------------------------------------- 10: malformed STAC


@pytest.mark.parametrize(
    ("edit", "words"),
    [
        (lambda a: a["raster:bands"][0].update(nodata="abc"), ("nodata", "'abc'")),
        (lambda a: a["raster:bands"][0].update(nodata=[0]), ("nodata",)),
        (lambda a: a["raster:bands"][0].update(scale="abc"), ("scale", "'abc'")),
        (lambda a: a["raster:bands"][0].update(scale=[1]), ("scale",)),
        (lambda a: a["raster:bands"][0].update(scale=float("nan")), ("scale", "nan")),
        (lambda a: a["raster:bands"][0].update(scale=1e300), ("scale", "1e+300")),
        (lambda a: a["raster:bands"][0].update(offset=float("inf")), ("offset", "inf")),
        (lambda a: a.update({"raster:bands": {"scale": 1}}), ("raster:bands",)),
        (lambda a: a.update({"raster:bands": [1]}), ("raster:bands",)),
        (lambda a: a.update({"eo:bands": "red"}), ("eo:bands",)),
        (lambda a: a.update(href=5), ("href",)),
    ],
)
def test_a_malformed_stac_asset_names_the_field(
    tmp_path: Path, edit: Callable[[dict[str, Any]], None], words: tuple[str, ...]
) -> None:
    item = stac_item(tmp_path / "stac")
    edit_item(item, lambda i: edit(i["assets"]["red"]))
    refused(item.path, "asset 'red'", *words)


def test_malformed_stac_item_fields_are_one_line(tmp_path: Path) -> None:
    item = stac_item(tmp_path / "stac")
    edit_item(item, lambda i: i["properties"].update(instruments=[1, 2]))
    refused(item.path, "instruments")
    edit_item(item, lambda i: i.update(properties=[]))
    refused(item.path, "properties")
    item.path.write_bytes(b'{"type": "Feature", "id": "\xff"}')
    refused(item.path, "not UTF-8")
    item.path.write_text("[" * 100_000)
    refused(item.path, "nested too deeply")


# ----------------------------------------------------------------------------- 11, 13: S2 scaling


@pytest.mark.parametrize(
    ("tag", "value"),
    [
        ("BOA_ADD_OFFSET", "abc"),
        ("BOA_ADD_OFFSET", "nan"),
        ("BOA_ADD_OFFSET", "inf"),
        ("BOA_ADD_OFFSET", "1e300"),
        ("BOA_QUANTIFICATION_VALUE", "1e-300"),
    ],
)
def test_absurd_sentinel2_scaling_names_the_field(tmp_path: Path, tag: str, value: str) -> None:
    s2 = sentinel2_safe(tmp_path / "dl", "L2A")
    xml = s2.files["xml"]
    text = re.sub(rf"(<{tag}[^>]*>)[^<]*(</{tag}>)", rf"\g<1>{value}\g<2>", xml.read_text())
    xml.write_text(text)
    refused(s2.path, "MTD_MSIL2A.xml", tag)


# ----------------------------------------------------------------------------- 14, 15: values


@pytest.mark.parametrize(("option", "value"), [("--scale", "1e308"), ("--offset", "1e308")])
def test_absurd_scale_options_are_refused(tmp_path: Path, option: str, value: str) -> None:
    scene = write_raster(tmp_path / "a.tif", np.ones((3, 8, 8), np.uint16), crs="EPSG:32633")
    for cmd in ("predict", "tile"):
        msg = fails(tmp_path, [cmd, scene, option, value, "--out", tmp_path / "o"], option)
        assert value.replace("1e308", "1e+308") in msg or value in msg


def test_a_complex_raster_is_refused(tmp_path: Path) -> None:
    scene = tmp_path / "c.tif"
    data = (np.ones((3, 8, 8)) + 1j * np.ones((3, 8, 8))).astype(np.complex64)
    profile = {"driver": "GTiff", "width": 8, "height": 8, "count": 3, "dtype": "complex64",
               "crs": "EPSG:32633", "transform": Affine(30, 0, 5e5, 0, -30, 5e6)}  # fmt: skip
    with rasterio.open(scene, "w", **profile) as dst:
        dst.write(data)
    refused(scene, "complex64", str(scene))
    fails(tmp_path, ["predict", scene, "--out", tmp_path / "o"], "complex64")


def _complex_copy(path: Path) -> None:
    """Rewrite the single-band raster ``path`` as complex64 on the same grid."""
    with rasterio.open(path) as src:
        data, profile = src.read(1), src.profile
    profile.update(driver="GTiff", dtype="complex64", nodata=None)
    path.unlink()
    with rasterio.open(path, "w", **profile) as dst:
        dst.write((data + 1j * data).astype(np.complex64), 1)


def test_a_complex_band_of_a_product_is_refused(tmp_path: Path) -> None:
    """A product stacks its bands in a float32 VRT, which would drop the imaginary part."""
    product = landsat_c2(tmp_path / "dl", "L2SP")
    _complex_copy(product.path / f"{product.product_id}_SR_B4.TIF")
    refused(product.path, "complex64", "band SR_B4", product.product_id)
    item = stac_item(tmp_path / "stac")
    _complex_copy(tmp_path / "stac" / "cogs" / "B03.tif")
    refused(item.path, "complex64", "band green", "B03.tif")
    p = band_files(tmp_path / "bf")
    _complex_copy(p.files["B"])
    refused(p.files["R"], "complex64", "scene_B2.tif", band_files=list(p.files.values()))


@pytest.mark.parametrize(("dtype", "option"), [("float32", "--scale"), ("float64", "--scale"),
                                               ("float64", "--offset")])  # fmt: skip
def test_scale_in_range_on_extreme_values_warns_nothing(
    tiny_run: Path, tmp_path: Path, dtype: str, option: str
) -> None:
    """--scale/--offset inside their range on values near a float type's top (item 14): no
    numpy RuntimeWarning reaches the user, and what overflows is at the top of the stretch, as
    the same values saturated beforehand are."""
    top = float(np.finfo(dtype).max)
    data = np.full((3, 64, 64), 2000.0, dtype)
    data[:, :20] = top / 2  # times 1e6 beyond the type; plus 1e6: beyond float32
    data[:, 40:] = np.nan
    scene = write_raster(tmp_path / "a.tif", data, crs="EPSG:32633")
    with np.errstate(over="ignore"):
        done = np.clip(data.astype(np.float64) * (1e6 if option == "--scale" else 1), -3e38, 3e38)
    done += 1e6 if option == "--offset" else 0
    same = write_raster(tmp_path / "b.tif", done.astype(np.float32), crs="EPSG:32633")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        r = run("predict", scene, "--model", tiny_run, option, "1e6", "--out", tmp_path / "o")
        assert r.exit_code == 0, r.output
        r = run("tile", scene, option, "1e6", "--tile-size", "64", "--out", tmp_path / "t")
        assert r.exit_code == 0, r.output
    leaked = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    assert not leaked, leaked
    r = run("predict", same, "--model", tiny_run, "--scale", "1", "--out", tmp_path / "o")
    assert r.exit_code == 0, r.output
    with (
        rasterio.open(tmp_path / "o" / "a_mask.tif") as a,
        rasterio.open(tmp_path / "o" / "b_mask.tif") as b,
    ):
        assert np.array_equal(a.read(), b.read())


# ----------------------------------------------------------------------------- 22, 23: messages


def test_band_files_half_a_pixel_apart_give_both_origins(tmp_path: Path) -> None:
    p = band_files(tmp_path)
    with rasterio.open(p.files["G"]) as src:
        data, profile = src.read(), src.profile
    profile["transform"] = src.transform * Affine.translation(0.5, 0)
    with rasterio.open(p.files["G"], "w", **profile) as dst:
        dst.write(data)
    files = [p.files[k] for k in ("R", "G", "B")]
    msg = refused(files[0], band_files=files)
    assert "500015" in msg and "500000" in msg, msg


def test_a_missing_or_remote_band_is_not_called_corrupt(tmp_path: Path) -> None:
    product = landsat_c2(tmp_path / "dl", "L2SP")
    qa = product.path / f"{product.product_id}_QA_PIXEL.TIF"
    qa.unlink()
    qa.symlink_to(tmp_path / "gone.tif")  # listed and linked, but not there
    msg = refused(product.path, "QA_PIXEL")
    assert "corrupt" not in msg, msg
    item = stac_item(tmp_path / "stac")
    edit_item(item, lambda i: i["assets"]["red"].update(href="https://no-such-host.invalid/a.tif"))
    msg = refused(item.path, "could not be fetched", "check the URL")
    assert "corrupt" not in msg, msg


# ----------------------------------------------------------------------------- 24: options


def test_a_nan_option_names_the_option(tmp_path: Path) -> None:
    from cloudcps.train.config import TrainConfig

    with pytest.raises(InputError, match="--synthetic-clouds is nan"):
        TrainConfig(data=tmp_path, synthetic_clouds=float("nan")).validate()


# ----------------------------------------------------------------------------- 18, 19: evaluate


def test_evaluate_scores_a_partial_val_split_by_groups(tiny_run: Path, tmp_path: Path) -> None:
    from tests.test_partial import _binary_scene

    scene, lab = _binary_scene(tmp_path)
    tiles = tmp_path / "T"
    r = run("tile", scene, "--label-dir", lab.parent, "--label-map", "0:0|3,1:1|2",
            "--tile-size", "64", "--val", "chip", "--out", tiles)  # fmt: skip
    assert r.exit_code == 0, r.output
    assert "0.0%" not in r.output and "partial labels only" in r.output, r.output  # item 25
    r = run("evaluate", "--model", tiny_run, "--data", tiles, "--split", "val",
            "--out", tmp_path / "rep")  # fmt: skip
    assert r.exit_code == 0, r.output
    assert "n/a" not in r.output and "by groups of the partial labels" in r.output, r.output
    report = json.loads((tmp_path / "rep" / "report.json").read_text())
    (result,) = report["results"].values()
    assert result["miou"] is not None and len(result["classes"]) == 2


def test_evaluate_label_map_with_sets_speaks_of_the_option(tmp_path: Path) -> None:
    grid = np.array([[0, 1], [1, 0]], np.uint8).repeat(20, 0).repeat(20, 1)
    ref = write_raster(tmp_path / "ref.tif", grid, crs="EPSG:32633")
    pred = write_raster(tmp_path / "pred.tif", grid, crs="EPSG:32633")
    args = ["evaluate", "--pred", pred, "--ref", ref, "--label-map", "0:0|3,1:1|2"]
    msg = fails(tmp_path, [*args, "--out", tmp_path / "rep"], "not a set of classes")
    assert "134" not in msg and "137" not in msg and "--merge" in msg, msg


# ----------------------------------------------------------------------------- 12, 16: train


@pytest.mark.parametrize(
    ("option", "value"),
    [("optimizer", "adamw"), ("ema", 0.99), ("encoder_norm", "frozen"),
     ("synthetic_clouds", 0.5), ("crop", 128)],
)  # fmt: skip
def test_resume_refuses_what_the_checkpoint_was_built_with(
    tiny_run: Path, option: str, value: Any
) -> None:
    from cloudcps.train import resolve_config

    flag = "--" + option.replace("_", "-")
    with pytest.raises(InputError, match=f"trained with {flag} .*drop {flag}"):
        resolve_config({"out": str(tiny_run), option: value}, None, True)


def test_init_refuses_another_arch_or_encoder(tiny_run: Path, tmp_path: Path) -> None:
    from cloudcps.train import resolve_config

    base = {"data": str(tmp_path), "out": str(tmp_path / "R"), "init": str(tiny_run)}
    with pytest.raises(InputError, match=r"--init .* not --arch unet"):
        resolve_config({**base, "arch": "unet"}, None, False)
    with pytest.raises(InputError, match="not --encoder mobilenet_v2"):
        resolve_config({**base, "encoder": "mobilenet_v2"}, None, False)
    cfg, _ = resolve_config({**base, "encoder": "resnet18"}, None, False)  # the same: fine
    assert cfg.encoder == "resnet18"


def test_train_has_threads_and_a_nan_option_is_named(tmp_path: Path) -> None:
    r = run("train", "--help")
    assert "--threads" in r.output
    r = run("train", "--data", tmp_path, "--synthetic-clouds", "nan", "--out", tmp_path / "R")
    assert r.exit_code == 1 and "--synthetic-clouds is nan" in r.output, r.output


def test_ctrl_c_exits_130_in_every_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import cloudcps.scenes.open as sc

    def interrupt(*args: Any, **kw: Any) -> Any:
        raise KeyboardInterrupt

    monkeypatch.setattr(sc, "_open_scene", interrupt)  # what every caller of open_scene runs
    scene = write_raster(tmp_path / "a.tif", np.ones((3, 8, 8), np.uint16), crs="EPSG:32633")
    for cmd in ("predict", "tile"):
        r = run(cmd, scene, "--out", tmp_path / "o")
        assert r.exit_code == 130 and "interrupted" in r.output, r.output


# ----------------------------------------------------------------------------- 20, 25: messages


def test_skip_existing_keeps_a_users_own_mask_file(tiny_run: Path, tmp_path: Path) -> None:
    scene = write_raster(tmp_path / "a.tif", np.ones((3, 64, 64), np.uint16), crs="EPSG:32633")
    write_raster(tmp_path / "a_mask.tif", np.zeros((64, 64), np.uint8), crs="EPSG:32633")
    msg = fails(tmp_path, ["predict", scene, "--model", tiny_run, "--skip-existing"], "is kept")
    assert "delete" not in msg and "not a mask cloudcps wrote" in msg, msg


def test_a_safe_and_its_zip_are_named_one_product(tmp_path: Path) -> None:
    s2 = sentinel2_safe(tmp_path / "dl", "L2A")
    msg = fails(tmp_path, ["tile", s2.path, s2.files["zip"], "--out", tmp_path / "t"],
                "same product")  # fmt: skip
    assert "rename" not in msg and "give only one" in msg, msg


def test_a_url_scene_is_shown_with_both_slashes() -> None:
    from cloudcps.scenes import SceneRef

    assert SceneRef(Path("http://127.0.0.1:8/item")).name == "http://127.0.0.1:8/item"


# ----------------------------------------------------------------------------- 17: tile --clear


def test_every_clear_tile_is_labelled(scenes: Path, tmp_path: Path) -> None:
    from tests.conftest import LMAP

    clear = write_raster(tmp_path / "c" / "clear.tif",
                         np.full((3, 256, 192), 900, np.uint16), crs="EPSG:32633")  # fmt: skip
    out = tmp_path / "t"
    r = run("tile", scenes / "scenes" / "a.tif", "--label-dir", scenes / "labels",
            "--label-map", LMAP, "--clear", clear, "--tile-size", "64", "--out", out)  # fmt: skip
    assert r.exit_code == 0, r.output
    manifest = json.loads((out / "manifest.json").read_text())
    clear_ids = {t["id"] for t in manifest["tiles"] if t["scene"] == "clear"}
    labelled = set((out / "splits" / "labeled.txt").read_text().split())
    assert len(clear_ids) == 12 and clear_ids <= labelled


@pytest.mark.parametrize("form", ["landsat", "sentinel2 zip", "stac"])
def test_every_tile_of_a_product_given_as_clear_is_labelled_clear(
    scenes: Path, tmp_path: Path, form: str
) -> None:
    """Item 17, second half: a product (folder, archive, STAC item) as --clear, beside labelled
    scenes: all its tiles in the labelled split, every valid pixel labelled clear."""
    from PIL import Image

    from tests.conftest import LMAP

    if form == "landsat":
        product = landsat_c2(tmp_path / "dl", "L2SP")
        given = product.path
    elif form == "stac":
        product = stac_item(tmp_path / "stac")
        given = product.path
    else:
        product = sentinel2_safe(tmp_path / "dl", "L2A")
        given = product.files["zip"]
    out = tmp_path / "t"
    r = run("tile", scenes / "scenes" / "a.tif", scenes / "scenes" / "b.tif", "--label-dir",
            scenes / "labels", "--label-map", LMAP, "--clear", given, "--tile-size", "64",
            "--out", out)  # fmt: skip
    assert r.exit_code == 0, r.output
    manifest = json.loads((out / "manifest.json").read_text())
    mine = [t for t in manifest["tiles"] if t["scene"] == product.product_id]
    labelled = set((out / "splits" / "labeled.txt").read_text().split())
    assert len(mine) == 4 and {t["id"] for t in mine} <= labelled, (len(mine), labelled)
    for t in mine:
        label = np.asarray(Image.open(out / t["label"]))
        valid = np.asarray(Image.open(out / t["valid_mask"])) > 0
        assert valid.any() and (label[valid] == 0).all() and (label[~valid] == 255).all()


def test_train_takes_the_tiles_of_a_product_with_a_hostile_id(tmp_path: Path) -> None:
    """Item 2: the tiles of products whose ids try to leave the folder are named after the
    products' own files, stay in the tile folder, and train accepts the manifest."""
    from tests.conftest import LMAP, scene_pair
    from tests.test_train import TINY_ARGS

    a, _ = scene_pair(tmp_path / "data", "a", 96, 96)
    landsat = landsat_c2(tmp_path / "d" / "dl", "L2SP")
    mtl_json(landsat, lambda m: m["PRODUCT_CONTENTS"].update(LANDSAT_PRODUCT_ID="../escaped"))
    item = stac_item(tmp_path / "d" / "stac")
    edit_item(item, lambda i: i.update(id="../../escaped2"))
    before = snapshot(tmp_path)
    tiles, runs = tmp_path / "d" / "tiles", tmp_path / "d" / "R"
    r = run("tile", a, item.path, "--label-dir", tmp_path / "data" / "labels", "--label-map",
            LMAP, "--clear", landsat.path, "--tile-size", "64", "--out", tiles)  # fmt: skip
    assert r.exit_code == 0, r.output
    names = {t["scene"] for t in json.loads((tiles / "manifest.json").read_text())["tiles"]}
    assert names == {"a", landsat.path.name, item.path.stem}, names
    r = run("-q", "train", "--data", tiles, *TINY_ARGS, "--iters", "2", "--out", runs)
    assert r.exit_code == 0, r.output
    assert (runs / "latest.pt").is_file()
    new = set(snapshot(tmp_path)) - set(before)
    assert all(p.startswith(("d/tiles/", "d/R/")) for p in new), sorted(new)
