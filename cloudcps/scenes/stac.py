"""STAC Items (a JSON file or a URL): the assets whose ``eo:bands`` common name is red, green,
blue, nir (or nir08), else the assets keyed so, as (DN * scale + offset) x 10000 from each asset's
``raster:bands`` (none given: values as stored), with ``raster:bands`` nodata. An item read from a
URL names remote assets only; a local item's relative hrefs stay in its folder."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlparse

from cloudcps import untrusted
from cloudcps.errors import InputError
from cloudcps.scenes.scene import BandSource, Scene
from cloudcps.scenes.vrt import stacked_scene
from cloudcps.untrusted import safe_name

STAC_NAMES = {"red": ("red",), "green": ("green",), "blue": ("blue",), "nir": ("nir", "nir08")}


def _load_item(where: str) -> tuple[dict[str, Any], str]:
    """(the item, the base its relative hrefs resolve against); bounded in size and, for a URL,
    in time (:mod:`cloudcps.untrusted`)."""
    try:
        if re.match(r"^https?://", where):
            data = untrusted.fetch_url(where, "STAC item")
            base = where
        else:
            data = untrusted.read_file_limited(Path(where), f"STAC item {where}", "the file")
            base = str(Path(where).resolve().parent) + "/"
        item = json.loads(untrusted.decode(data, f"STAC item {where}", "the item"))
    except json.JSONDecodeError as exc:
        raise InputError(
            f"STAC item {where} is not valid JSON ({exc}); give a STAC Item JSON file"
        ) from None
    except RecursionError:
        raise InputError(
            f"STAC item {where} is nested too deeply to be a STAC Item; give one item's JSON"
        ) from None
    except OSError as exc:
        raise InputError(f"STAC item {where} cannot be read ({exc})") from None
    if not (
        isinstance(item, dict)
        and item.get("type") == "Feature"
        and isinstance(item.get("assets"), dict)
    ):
        raise InputError(
            f"{where} is JSON but not a STAC Item (a Feature with assets); give one item's JSON "
            "(an ItemCollection or search result: save one of its features)"
        )
    return item, base


def _gdal_href(href: str, base: str, owner: str, field: str) -> str:
    """The GDAL name of an asset: an item read from a URL resolves every href against it (RFC
    3986: ``/a.tif`` is on the same host) and may name remote assets only; a local item's
    relative hrefs must stay in its folder (its absolute paths and ``file://`` are the user's)."""
    if re.match(r"^https?://", base):
        href = urljoin(base, href)
        untrusted.remote_href(href, owner, field)
    elif href.startswith("file://"):
        return urlparse(href).path
    elif not re.match(r"^[a-z][a-z0-9+.-]*://", href) and not href.startswith("/"):
        local = Path(base, href)
        return str(untrusted.inside(Path(base), local, owner, "the item", field))
    if re.match(r"^https?://", href):
        return "/vsicurl/" + href
    if href.startswith("s3://"):
        return "/vsis3/" + href[5:]
    if href.startswith("gs://"):
        return "/vsigs/" + href[5:]
    return href


def _asset_bands(
    asset: dict[str, Any], owner: str, key: str
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(eo band descriptions, raster band descriptions) of an asset, STAC 1.0 or 1.1."""
    eo = asset.get("eo:bands")
    raster = asset.get("raster:bands")
    fields = ("eo:bands", "raster:bands")
    if eo is None and raster is None and asset.get("bands") is not None:  # STAC 1.1
        eo = raster = asset["bands"]
        fields = ("bands", "bands")
    where = f"asset {key!r}"
    return (
        untrusted.objects(eo, owner, where, fields[0]),
        untrusted.objects(raster, owner, where, fields[1]),
    )


def _common_name(band: dict[str, Any]) -> str | None:
    name = band.get("common_name", band.get("eo:common_name"))
    return str(name).lower() if name else None


def _pick_asset(item: dict[str, Any], want: str, owner: str) -> tuple[str, int] | None:
    """(asset key, 1-based band) for common name ``want``: single-band assets first, the key
    equal to the name first, then multi-band assets, then assets keyed by the name alone."""
    names = STAC_NAMES[want]
    hits = []
    for key, asset in item["assets"].items():
        if not isinstance(asset, dict) or "href" not in asset:
            continue
        eo, _ = _asset_bands(asset, owner, key)
        for i, band in enumerate(eo, start=1):
            if _common_name(band) in names:
                hits.append((len(eo) > 1, key.lower() not in names, key, i))
    if hits:
        _, _, key, i = min(hits)
        return key, i
    for name in names:
        for key, asset in item["assets"].items():
            if key.lower() == name and isinstance(asset, dict) and "href" in asset:
                return key, 1
    return None


def _nodata(rb: dict[str, Any], asset: dict[str, Any], owner: str, where: str) -> float | None:
    """The no data of a band (its ``raster:bands`` entry ``rb``, else the asset's); NaN: none."""
    nodata = rb.get("nodata", asset.get("nodata"))
    if nodata is not None and not (isinstance(nodata, str) and nodata.lower() == "nan"):
        nodata = untrusted.number(nodata, owner, where, "nodata", -3.4e38, 3.4e38)
        return None if math.isnan(nodata) else nodata
    return None


def _scaling(rb: dict[str, Any], owner: str, where: str, key: str) -> tuple[float, float, str]:
    """(ScaleRatio, ScaleOffset, where they were read) that give reflectance x 10000 from the
    ``raster:bands`` entry ``rb`` of asset ``key``: without scale and offset, values as stored."""
    scale, offset = rb.get("scale"), rb.get("offset")
    if scale is None and offset is None:
        return 1.0, 0.0, "none in the item (values as stored)"
    # |scale|, |offset| <= 100: reflectance x 10000 then stays within float32 and sane
    ratio = 10000.0 * (
        1.0
        if scale is None
        else untrusted.number(scale, owner, where, "scale", -100, 100, nonzero=True)
    )
    shift = 10000.0 * (
        0.0 if offset is None else untrusted.number(offset, owner, where, "offset", -100, 100)
    )
    return ratio, shift, f"raster:bands scale/offset of asset {key!r} in the item, x 10000"


def _source(
    item: dict[str, Any], key: str, band: int, base: str, owner: str
) -> tuple[BandSource, bool]:
    """(the source of ``band`` of asset ``key``, whether the item gives its scaling)."""
    asset = item["assets"][key]
    _, raster = _asset_bands(asset, owner, key)
    rb = raster[band - 1] if len(raster) >= band else {}
    where_band = f"raster:bands of asset {key!r}"
    nodata = _nodata(rb, asset, owner, where_band)
    ratio, shift, origin = _scaling(rb, owner, where_band, key)
    href = untrusted.text(asset["href"], owner, f"asset {key!r}", "href", numbers=False)
    source = BandSource(
        key,
        _gdal_href(href, base, owner, f"href of asset {key!r}"),
        band,
        scale=ratio,
        offset=shift,
        nodata=nodata,
        scaling_from=origin,
    )
    return source, rb.get("scale") is not None or rb.get("offset") is not None


def _record(
    item: dict[str, Any], where: str, item_id: str, owner: str, scaled: bool
) -> dict[str, Any]:
    """What the item says of the scene: collection, sensor, platform, processing level."""
    props = untrusted.group(item, "properties", owner, "the item")
    instruments = props.get("instruments") or []
    if not (isinstance(instruments, list) and all(isinstance(i, str) for i in instruments)):
        raise InputError(
            f"{owner}: properties.instruments is {untrusted.shown(instruments, 40)}, not a list "
            "of names; fix or regenerate the item"
        )
    return {
        "path": where,
        "item_id": item_id,
        "collection": item.get("collection"),
        "sensor": ", ".join(instruments) or None,
        "platform": props.get("platform"),
        "processing_level": props.get("processing:level") or props.get("s2:product_type"),
        "scaling": "DN * scale + offset from raster:bands, x 10000" if scaled else "none",
    }


def open_stac(where: str) -> Scene:
    """The scene of the STAC item at ``where`` (a JSON file or a URL); NIR only if it has one."""
    item, base = _load_item(where)
    owner = f"STAC item {where}"
    item_id = safe_name(item.get("id"), Path(urlparse(where).path).stem)
    sources: list[BandSource] = []
    scaled = False
    for want in ("red", "green", "blue", "nir"):
        pick = _pick_asset(item, want, owner)
        if pick is None:
            if want == "nir":
                continue
            raise InputError(
                f"STAC item {where} has no {want} asset (none with eo:bands common_name {want!r} "
                f"nor keyed {want!r}); give an item of an optical product with red, green and "
                "blue bands"
            )
        source, given = _source(item, *pick, base, owner)
        sources.append(source)
        scaled = scaled or given
    if not scaled:  # no asset gave scaling: values as stored, the caller's --scale applies
        for s in sources:
            s.scaling_from = "none in the item (values as stored)"
    record = _record(item, where, item_id, owner, scaled)
    return stacked_scene(
        sources,
        kind="stac",
        product_id=item_id,
        record=record,
        scaled=scaled,
        owner=owner,
    )
