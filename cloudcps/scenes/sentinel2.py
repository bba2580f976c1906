"""Sentinel-2 L1C / L2A products (a ``.SAFE`` folder, its ``.zip``, its ``MTD_MSIL1C.xml`` /
``MTD_MSIL2A.xml``): B04, B03, B02, B08 of the 10 m subdataset of GDAL's SENTINEL2 driver as
(DN + offset) * 10000 / Q, with offset and Q read from the product XML."""

from __future__ import annotations

import re
import zipfile
from dataclasses import dataclass
from pathlib import Path

import rasterio
from rasterio.errors import RasterioError

from cloudcps import untrusted
from cloudcps.errors import InputError
from cloudcps.io import GDAL_ERRORS, contains, gdal_message, is_virtual_path
from cloudcps.scenes.scene import BandSource, Scene, product_stem
from cloudcps.scenes.vrt import stacked_scene
from cloudcps.untrusted import safe_name

S2_RGBN = ("B04", "B03", "B02", "B08")


@dataclass(frozen=True)
class _S2Xml:
    """What GDAL's SENTINEL2 driver reads from a product XML."""

    xml: str  # the GDAL name of the product XML
    tags: dict[str, str]  # the product's metadata (PROCESSING_BASELINE, quantification, ...)
    sub: str  # the 10 m subdataset
    described: dict[str, int]  # the driver's band names (B4, B8) -> 1-based band in ``sub``
    band_tags: dict[int, dict[str, str]]  # per band in ``sub``: its metadata (the add offsets)
    files: list[str]  # the files behind ``sub``

    @property
    def name(self) -> str:
        """The product XML's file name, in messages."""
        return Path(self.xml).name


@dataclass(frozen=True)
class _S2Scaling:
    """The keys and values of a product's (DN + offset) * 10000 / Q."""

    qkey: str  # QUANTIFICATION_VALUE (L1C) or BOA_QUANTIFICATION_VALUE (L2A)
    okey: str  # RADIO_ADD_OFFSET (L1C) or BOA_ADD_OFFSET (L2A)
    quant: float  # Q
    nodata: float  # SPECIAL_VALUE_NODATA
    baseline: str  # PROCESSING_BASELINE ("" if not given)


def _s2_entry(p: Path) -> tuple[str, str, str]:
    """(GDAL name of the product XML, what to call the product in messages, the GDAL name of the
    product's root: every file GDAL reads must lie under it). The metadata GDAL parses (the
    product and tile XMLs) is size-checked first: GDAL reads an XML whole."""
    owner = f"Sentinel-2 product {p}"
    if p.is_dir() or p.suffix.lower() != ".zip":
        root = p if p.is_dir() else p.parent
        found = sorted(root.glob("MTD_MSI*.xml")) if p.is_dir() else [p]
        if not found:
            raise InputError(
                f"Sentinel-2 product {p} has no MTD_MSIL1C.xml or MTD_MSIL2A.xml; the SAFE folder "
                "is incomplete: download or unzip it again"
            )
        for xml in [found[0], *sorted(root.glob("GRANULE/*/MTD_TL.xml"))]:
            untrusted.check_size(xml.stat().st_size, owner, xml.name)
        return str(found[0].absolute()), str(p), str(root.resolve())
    try:
        with zipfile.ZipFile(p) as zf:
            infos = zf.infolist()
    except (zipfile.BadZipFile, OSError) as exc:
        raise InputError(f"Sentinel-2 zip {p} cannot be read ({exc}); download it again") from None
    xmls = sorted(
        i.filename
        for i in infos
        if re.fullmatch(r"[^/]+\.SAFE/MTD_MSI\w+\.xml", i.filename, re.IGNORECASE)
    )
    if not xmls:
        raise InputError(
            f"zip {p} holds no Sentinel-2 product (no <name>.SAFE/MTD_MSIL1C.xml or "
            "MTD_MSIL2A.xml); give a Sentinel-2 .zip, a SAFE folder or a raster"
        )
    for info in infos:
        if info.filename.lower().endswith(".xml"):
            untrusted.check_size(info.file_size, owner, info.filename)
    return f"/vsizip/{p.absolute()}/{xmls[0]}", str(p), f"/vsizip/{p.absolute()}"


def _s2_level(xml: str, owner: str) -> str:
    name = Path(xml).name.upper()
    if "MSIL1C" in name:
        return "L1C"
    if "MSIL2A" in name:
        return "L2A"
    level = name.removeprefix("MTD_MSI").removesuffix(".XML")
    raise InputError(
        f"Sentinel-2 product {owner} is of processing level {level} ({Path(xml).name}), which is "
        "not supported; give a Level-1C or Level-2A product"
    )


def _s2_read(xml: str, owner: str) -> _S2Xml:
    """The product's metadata and its 10 m subdataset, as GDAL's SENTINEL2 driver reads them."""
    try:
        with rasterio.open(xml) as prod:
            tags = prod.tags()
            subs = [s for s in prod.subdatasets if ":10m:" in s]
        if subs:
            with rasterio.open(subs[0]) as s10:
                described = {
                    (d or "").split(",")[0]: i for i, d in enumerate(s10.descriptions, start=1)
                }
                band_tags = {i: s10.tags(i) for i in range(1, s10.count + 1)}
                files = list(s10.files)
    except (RasterioError, *GDAL_ERRORS) as exc:
        raise InputError(
            f"Sentinel-2 product {owner}: GDAL cannot read {Path(xml).name} ({gdal_message(exc)}); "
            "the product XML is damaged: download the product again"
        ) from None
    if not subs:
        raise InputError(
            f"Sentinel-2 product {owner} has no 10 m bands ({Path(xml).name} lists no "
            f"{', '.join(S2_RGBN)} at 10 m); give a full L1C/L2A product"
        )
    return _S2Xml(xml, tags, subs[0], described, band_tags, files)


def _s2_files_inside(files: list[str], root: str, owner: str, xml: str) -> None:
    """Every file GDAL's SENTINEL2 driver opens (named by IMAGE_FILE in the XML) lies in the
    product: under the SAFE folder, or in its zip."""
    for f in files:
        if root.startswith("/vsizip/"):
            ok = f.startswith(root + "/") and ".." not in Path(f[len(root) :]).parts
        else:
            ok = not is_virtual_path(f) and contains(Path(root), Path(f))
        if not ok:
            raise InputError(
                f"Sentinel-2 product {owner}: IMAGE_FILE in {xml} names {f}, outside the product "
                f"({root}); cloudcps reads only the product's own files: download it again"
            )


def _s2_scaling(prod: _S2Xml, level: str, owner: str) -> _S2Scaling:
    """The quantification value and no data of the product (the offsets are per band)."""
    tags = prod.tags
    baseline = tags.get("PROCESSING_BASELINE", "")
    qkey = "BOA_QUANTIFICATION_VALUE" if level == "L2A" else "QUANTIFICATION_VALUE"
    okey = "BOA_ADD_OFFSET" if level == "L2A" else "RADIO_ADD_OFFSET"
    s2 = f"Sentinel-2 product {owner}"
    if qkey not in tags:
        raise InputError(
            f"Sentinel-2 product {owner}: {prod.name} has no {qkey}; the product XML is "
            "incomplete: download the product again"
        )
    quant = untrusted.number(tags[qkey], s2, prod.name, qkey, 1.0, 1e6)
    nodata = untrusted.number(
        tags.get("SPECIAL_VALUE_NODATA", "0") or 0,
        s2,
        prod.name,
        "SPECIAL_VALUE_NODATA",
        0,
        65535,
    )
    return _S2Scaling(qkey, okey, quant, nodata, baseline)


def _s2_offset(
    raw: str | None, band: str, sc: _S2Scaling, prod: _S2Xml, owner: str
) -> tuple[float, str]:
    """(the add offset of ``band``, where it was read): none before processing baseline 04.00."""
    okey, baseline = sc.okey, sc.baseline
    if raw is None:
        if _baseline_at_least(baseline, 4.0):
            raise InputError(
                f"Sentinel-2 product {owner} of processing baseline {baseline} lists no {okey} "
                f"for {band} in {prod.name}; the product XML is incomplete: download the "
                "product again"
            )
        return 0.0, f"no {okey} (processing baseline {baseline or '?'} < 04.00)"
    s2 = f"Sentinel-2 product {owner}"
    offset = untrusted.number(raw, s2, prod.name, f"{okey} of {band}", -65535, 65535)
    return offset, f"{okey} in {prod.name}"


def _s2_sources(prod: _S2Xml, sc: _S2Scaling, owner: str) -> tuple[list[BandSource], list[str]]:
    """(the sources of B04, B03, B02, B08 found in the 10 m subdataset, the bands not found)."""
    sources, missing = [], []
    for band in S2_RGBN:
        short = "B" + band[1:].lstrip("0")  # the driver's descriptions: B4, B8
        index = prod.described.get(short)
        pattern = re.compile(rf"_{band}(_10m)?\.jp2$", re.IGNORECASE)
        found = [f for f in prod.files if pattern.search(f)]
        if index is None or not found:
            missing.append(band)
            continue
        offset, origin = _s2_offset(prod.band_tags[index].get(sc.okey), band, sc, prod, owner)
        sources.append(
            BandSource(
                band,
                prod.sub,
                index,
                scale=10000.0 / sc.quant,
                offset=offset * 10000.0 / sc.quant,
                nodata=sc.nodata,
                scaling_from=f"{origin}; {sc.qkey} {sc.quant:g}",
                file=found[0],
            )
        )
    return sources, missing


def _s2_check_missing(p: Path, prod: _S2Xml, missing: list[str], level: str, owner: str) -> None:
    """Refuse a product whose 10 m bands are not all found: when none is, because PRODUCT_URI
    (which GDAL derives the file names from) was edited, say so."""
    uri = prod.tags.get("PRODUCT_URI", "")
    if len(missing) == 4 and re.sub(r"\.(SAFE|zip)$", "", uri, flags=re.I) != product_stem(p):
        raise InputError(
            f"Sentinel-2 product {owner}: PRODUCT_URI {untrusted.shown(uri)} in {prod.name} "
            f"does not match the product ({product_stem(p)}); GDAL derives the band file "
            "names from it, so none is found: restore the original XML or download the product "
            "again"
        )
    if missing:
        what = "none of its 10 m bands" if len(missing) == 4 else "no " + ", ".join(missing)
        raise InputError(
            f"Sentinel-2 product {owner} has {what} at 10 m (GRANULE/*/IMG_DATA/"
            f"{'R10m/*_B0x_10m' if level == 'L2A' else '*_B0x'}.jp2); the product is incomplete: "
            "download or unzip it again"
        )


def open_sentinel2(p: Path) -> Scene:
    """The scene of the Sentinel-2 product ``p`` (a SAFE folder, its zip or its product XML)."""
    xml, owner, root = _s2_entry(p)
    level = _s2_level(xml, owner)
    prod = _s2_read(xml, owner)
    _s2_files_inside(prod.files, root, owner, prod.name)
    sc = _s2_scaling(prod, level, owner)
    sources, missing = _s2_sources(prod, sc, owner)
    _s2_check_missing(p, prod, missing, level, owner)
    uri = prod.tags.get("PRODUCT_URI", "")
    product_id = safe_name(re.sub(r"\.(SAFE|zip)$", "", uri, flags=re.IGNORECASE), product_stem(p))
    record = {
        "path": str(p),
        "product_xml": xml,
        "subdataset": prod.sub,
        "sensor": "Sentinel-2 MSI",
        "spacecraft": prod.tags.get("DATATAKE_1_SPACECRAFT_NAME"),
        "processing_level": level,
        "processing_baseline": sc.baseline or None,
        "scaling": f"(DN + {sc.okey}) * 10000 / {sc.qkey}",
    }
    return stacked_scene(
        sources, kind="sentinel2", product_id=product_id, record=record, scaled=True, owner=owner
    )


def _baseline_at_least(baseline: str, version: float) -> bool:
    try:
        return float(baseline) >= version
    except ValueError:
        return True  # unknown: expect the offsets to be given
