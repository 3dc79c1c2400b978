"""The demo scene generator: georeferenced multispectral tiles that look like imagery, with implanted anomalies.

Each pixel is a mixture of a few smooth endmember spectra with spatially coherent abundances, a smooth
illumination field and sensor noise. Test tiles carry small targets (some sub-pixel) of a rare spectrum that no
mixture of the endmembers makes, and a truth raster marks them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from rasterio.crs import CRS
from rasterio.transform import from_origin
from scipy.ndimage import gaussian_filter

from pipeline.cog_writer import write_raster

#: Demo projection: UTM zone 32N (metres), 30 m pixels like Landsat.
DEMO_CRS = CRS.from_epsg(32632)
PIXEL_SIZE = 30.0
ORIGIN = (500_000.0, 5_000_000.0)
#: Width in pixels of the nodata strip along the left edge of every tile.
NODATA_STRIP = 3
FLOAT_NODATA = -9999.0
UINT16_NODATA = 0
UINT16_SCALE = 10_000.0


@dataclass(frozen=True)
class DemoLayout:
    """Paths of a generated demo data set."""

    normal: list[Path]
    test: list[Path]
    truth: list[Path]


def wavelengths(bands: int) -> np.ndarray:
    """Band centres in nm, spread over the VNIR-SWIR range as a hyperspectral sensor would."""
    return np.linspace(400.0, 2500.0, bands)


def _smooth_spectrum(rng: np.random.Generator, wl: np.ndarray, bumps: int, width: tuple[float, float]) -> np.ndarray:
    x = (wl - 400.0) / 2100.0
    s = rng.uniform(0.05, 0.25) + rng.uniform(-0.15, 0.25) * x
    for _ in range(bumps):
        c, w, a = rng.uniform(0, 1), rng.uniform(*width), rng.uniform(-0.15, 0.3)
        s = s + a * np.exp(-0.5 * ((x - c) / w) ** 2)
    return s


def endmembers(rng: np.random.Generator, wl: np.ndarray, k: int = 5) -> np.ndarray:
    """``k`` smooth reflectance spectra (k, bands) in [0.02, 0.7], with the atmosphere's water-absorption dips."""
    specs = []
    x = (wl - 400.0) / 2100.0
    veg = 0.05 + 0.4 / (1 + np.exp(-(wl - 720.0) / 15.0)) * np.exp(-x) + 0.03 * np.exp(-0.5 * ((wl - 550) / 30) ** 2)
    specs.append(veg)
    specs.append(0.1 + 0.35 * x)  # bare soil: rising to the SWIR
    specs.append(0.08 * np.exp(-3 * x) + 0.01)  # water
    while len(specs) < k:
        specs.append(_smooth_spectrum(rng, wl, bumps=3, width=(0.08, 0.25)))
    e = np.clip(np.array(specs[:k]), 0.02, 0.7)
    return e * _atmosphere(wl)


def _atmosphere(wl: np.ndarray) -> np.ndarray:
    dips = 1.0 - 0.6 * np.exp(-0.5 * ((wl - 1400) / 40) ** 2) - 0.7 * np.exp(-0.5 * ((wl - 1900) / 50) ** 2)
    return dips


def rare_spectrum(rng: np.random.Generator, wl: np.ndarray, base: np.ndarray) -> np.ndarray:
    """A material the endmembers cannot mix: narrow absorption and reflection features (paint, metal, plastic)."""
    x = (wl - 400.0) / 2100.0
    s = base.mean(axis=0).copy()
    for _ in range(4):
        c, w, a = rng.uniform(0.05, 0.95), rng.uniform(0.01, 0.04), rng.uniform(0.15, 0.3) * rng.choice([-1, 1])
        s = s + a * np.exp(-0.5 * ((x - c) / w) ** 2)
    return np.clip(s, 0.01, 0.9) * _atmosphere(wl)


def _abundances(rng: np.random.Generator, size: int, k: int) -> np.ndarray:
    fields = np.stack([gaussian_filter(rng.standard_normal((size, size)), sigma=size / 16, mode="wrap")
                       for _ in range(k)])
    fields /= fields.std(axis=(1, 2), keepdims=True) + 1e-12
    a = np.exp(2.0 * fields)
    return a / a.sum(axis=0, keepdims=True)


def scene(rng: np.random.Generator, ends: np.ndarray, size: int, noise: float = 0.004) -> np.ndarray:
    """One tile of mixed spectra, (bands, size, size) reflectance."""
    ab = _abundances(rng, size, ends.shape[0])
    img = np.einsum("kb,krc->brc", ends, ab)
    illum = 1.0 + 0.1 * gaussian_filter(rng.standard_normal((size, size)), sigma=size / 8, mode="wrap") / 0.05
    illum = np.clip(illum, 0.8, 1.2)
    img *= illum[None]
    img += rng.normal(0.0, noise, img.shape)
    return img


def implant(rng: np.random.Generator, img: np.ndarray, target: np.ndarray, n: int) -> np.ndarray:
    """Implant ``n`` small targets of spectrum ``target``: whole 1-3 px squares and sub-pixel mixtures.

    Returns the truth mask (rows, cols) uint8.
    """
    _, h, w = img.shape
    truth = np.zeros((h, w), dtype=np.uint8)
    margin = NODATA_STRIP + 4
    for i in range(n):
        side = 1 if i % 3 == 0 else int(rng.integers(1, 4))
        frac = float(rng.uniform(0.15, 0.5)) if i % 3 == 0 else 1.0  # every third target is sub-pixel
        r = int(rng.integers(4, h - side - 4))
        c = int(rng.integers(margin, w - side - 4))
        sl = (slice(None), slice(r, r + side), slice(c, c + side))
        img[sl] = (1 - frac) * img[sl] + frac * target[:, None, None] * rng.uniform(0.9, 1.1)
        truth[r:r + side, c:c + side] = 1
    return truth


def _encode(img: np.ndarray, dtype: str) -> tuple[np.ndarray, float]:
    if dtype == "uint16":
        out = np.clip(np.round(img * UINT16_SCALE), 1, 65535).astype(np.uint16)
        out[:, :, :NODATA_STRIP] = UINT16_NODATA
        return out, float(UINT16_NODATA)
    out = img.astype(np.float32)
    out[:, :, :NODATA_STRIP] = FLOAT_NODATA
    return out, FLOAT_NODATA


def demo_layout(outdir: str | Path, *, tiles_normal: int = 4, tiles_test: int = 2) -> DemoLayout:
    """The paths ``make_demo`` writes, known before it runs (the workflow plans its jobs on them)."""
    outdir = Path(outdir)
    return DemoLayout(
        normal=[outdir / "normal" / f"normal_{j:03d}.tif" for j in range(tiles_normal)],
        test=[outdir / "test" / f"tile_{j:03d}.tif" for j in range(tiles_test)],
        truth=[outdir / "truth" / f"tile_{j:03d}.tif" for j in range(tiles_test)],
    )


def make_demo(
    outdir: str | Path,
    *,
    seed: int = 0,
    bands: int = 64,
    size: int = 256,
    tiles_normal: int = 4,
    tiles_test: int = 2,
    dtype: str = "float32",
    targets_per_tile: int = 12,
    progress: Callable[[str], None] | None = None,
) -> DemoLayout:
    """Write a deterministic demo data set to ``outdir``: ``normal/``, ``test/`` and ``truth/`` GeoTIFFs."""
    if dtype not in ("float32", "uint16"):
        raise ValueError(f"dtype must be float32 or uint16, not {dtype}")
    outdir = Path(outdir)
    rng = np.random.default_rng(seed)
    wl = wavelengths(bands)
    ends = endmembers(rng, wl)
    target = rare_spectrum(rng, wl, ends)
    descriptions = [f"B{i + 1:03d} ({w:.0f} nm)" for i, w in enumerate(wl)]
    band_tags = [{"wavelength": f"{w:.2f}", "wavelength_units": "nm"} for w in wl]
    common = dict(crs=DEMO_CRS, descriptions=descriptions, band_tags=band_tags,
                  tags={"rsvae_demo_seed": seed, "rsvae_demo": "synthetic scene, see data/README.md"})
    layout = DemoLayout([], [], [])
    stride = (size + 16) * PIXEL_SIZE  # a gap between tiles: no two overlap
    for i in range(tiles_normal + tiles_test):
        is_test = i >= tiles_normal
        j = i - tiles_normal if is_test else i
        transform = from_origin(ORIGIN[0] + j * stride, ORIGIN[1] - (stride if is_test else 0), PIXEL_SIZE, PIXEL_SIZE)
        img = scene(rng, ends, size)
        truth = implant(rng, img, target, targets_per_tile) if is_test else None
        data, nodata = _encode(img, dtype)
        name = f"tile_{j:03d}.tif" if is_test else f"normal_{j:03d}.tif"
        path = outdir / ("test" if is_test else "normal") / name
        write_raster(path, data, transform=transform, nodata=nodata, **common)
        (layout.test if is_test else layout.normal).append(path)
        if truth is not None:
            tpath = outdir / "truth" / name
            write_raster(tpath, truth, transform=transform, crs=DEMO_CRS, descriptions=["anomaly"],
                         resampling="NEAREST")
            layout.truth.append(tpath)
        if progress:
            progress(str(path))
    return layout
