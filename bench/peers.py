"""The offline peer: ukis-csmask (UNet/EfficientNet-B4 in ONNX; 4 bands; clear/cloud/shadow).

It wants an (H, W, 4) float32 array of reflectance 0-1 and band names; its ``csm`` output is
0 clear, 1 cloud, 2 shadow and does not mark nodata itself.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

UKIS_TO_OURS_BINARY = {0: 0, 1: 1, 2: 0}  # clear, cloud, shadow -> clear/cloud


def run_ukis(image_chw: np.ndarray, product_level: str = "l1c", threads: int = 2) -> np.ndarray:
    """(4, H, W) uint16 R,G,B,NIR reflectance x 10000 -> (H, W) uint8: 0 clear, 1 cloud, 2 shadow,
    255 nodata (all bands 0)."""
    from ukis_csmask.mask import CSmask

    a = np.asarray(image_chw)
    img = np.moveaxis(a, 0, -1).astype(np.float32) / np.float32(10000.0)
    m = CSmask(
        img=img,
        band_order=["red", "green", "blue", "nir"],
        product_level=product_level,
        nodata_value=0,
        intra_op_num_threads=threads,
        inter_op_num_threads=1,
        providers=["CPUExecutionProvider"],
    )
    out = m.csm[..., 0].astype(np.uint8)
    out[np.all(a == 0, axis=0)] = 255
    return out


def ukis_file(path: Path, threads: int = 1) -> np.ndarray:
    """ukis-csmask on a 4-band R,G,B,NIR file (see :func:`run_ukis`); L2A (surface reflectance)
    when the name says so or the file is an On Cloud N chip, L1C (TOA) otherwise."""
    import rasterio

    level = "l2a" if "l2a" in path.name or "oncloudn" in str(path) else "l1c"
    with rasterio.open(path) as src:
        return run_ukis(src.read([1, 2, 3, 4]), product_level=level, threads=threads)
