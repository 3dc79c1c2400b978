"""Sensor product folders recognised from file names alone (offline): which files hold which bands, each band's
centre wavelength, the default bands, and the product's quality layer with the values or bits that mark a pixel
unusable (clouds, their shadows, no data).

Sentinel-2 L2A (a ``.SAFE`` folder, or any folder of ``*_B02*.jp2|tif`` band files such as a BigEarthNet patch) and
Landsat 4-9 Collection 2 (Level-2 ``*_SR_B*.TIF`` or Level-1 style ``*_B1.TIF`` band files, ``*_QA_PIXEL.TIF``),
and pre-collection Landsat 4-8 scenes (``LT52240631988227CUB02_B1.TIF``: no QA_PIXEL, so no default mask).
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pipeline.errors import InputError, RsvaeWarning

#: Sentinel-2 MSI centre wavelengths in nm (S2A; S2B differs by a few nm).
S2_WAVELENGTHS = {"B01": 443, "B02": 490, "B03": 560, "B04": 665, "B05": 705, "B06": 740, "B07": 783,
                  "B08": 842, "B8A": 865, "B09": 945, "B10": 1375, "B11": 1610, "B12": 2190}
#: Reflective bands at 10 and 20 m: without aerosol (B01), water vapour (B09) and cirrus (B10).
S2_DEFAULT = ("B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B11", "B12")
#: Scene classification (SCL) classes that are no usable ground: no data, saturated or defective, cloud shadow,
#: cloud medium and high probability, thin cirrus.
S2_SCL_INVALID = (0, 1, 3, 8, 9, 10)

#: Landsat 8/9 OLI centre wavelengths in nm (B8 panchromatic, B9 cirrus, B10/B11 thermal).
OLI_WAVELENGTHS = {"B1": 443, "B2": 482, "B3": 561, "B4": 655, "B5": 865, "B6": 1609, "B7": 2201, "B8": 590,
                   "B9": 1373, "B10": 10895, "B11": 12005}
OLI_DEFAULT = ("B2", "B3", "B4", "B5", "B6", "B7")
#: Landsat 4-7 TM/ETM+ centre wavelengths in nm (B6 thermal, B8 panchromatic on Landsat 7).
TM_WAVELENGTHS = {"B1": 485, "B2": 560, "B3": 660, "B4": 835, "B5": 1650, "B6": 11450, "B7": 2220, "B8": 710}
TM_DEFAULT = ("B1", "B2", "B3", "B4", "B5", "B7")
#: QA_PIXEL bits that make a pixel unusable: fill, dilated cloud, cirrus, cloud, cloud shadow.
LANDSAT_QA_BITS = (0, 1, 2, 3, 4)

_RASTER = r"\.(jp2|tif|tiff)$"
_S2_BAND = re.compile(r"_(B0[1-9]|B1[0-2]|B8A)(?:_(\d+)m)?" + _RASTER, re.I)
_S2_SCL = re.compile(r"_SCL(?:_(\d+)m)?" + _RASTER, re.I)
#: Collection names (``LC09_L2SP_...``, ``LT05_...``) or pre-collection scene IDs (``LT52240631988227CUB02_``:
#: sensor, mission, path, row, year, day of year, ground station, version).
_LANDSAT = re.compile(r"^L([CEOT])(?:0?([4-9])_|([4-8])\d{13}[A-Z0-9]{3}\d{2}_)")
_LS_BAND = re.compile(r"_(SR_)?(B\d{1,2})" + _RASTER, re.I)
_LS_QA = re.compile(r"_QA_PIXEL" + _RASTER, re.I)


@dataclass(frozen=True)
class Band:
    """One band file of a product: its sensor name (the stack's band description) and centre wavelength."""

    name: str
    path: str | Path  # a URL for a remote STAC asset
    wavelength: float


@dataclass(frozen=True)
class Source:
    """One band of the stack: which band of which input, its name (band description) and wavelength in nm."""

    path: str
    band: int
    name: str
    wavelength: float | None = None


@dataclass(frozen=True)
class MaskRule:
    """A mask layer (a product's quality layer, or `rsvae stack --mask`) and what in it marks a pixel unusable:
    class ``values`` or bit flags ``bits`` of band 1."""

    path: str | Path
    label: str
    values: tuple[int, ...] = ()
    bits: tuple[int, ...] = ()

    def bad(self, data: np.ndarray) -> np.ndarray:
        """Where ``data`` (the layer's values) marks a pixel unusable."""
        out = np.zeros(data.shape, bool)
        if self.values:
            out |= np.isin(data, self.values)
        if self.bits:
            out |= (data.astype(np.int64) & sum(1 << b for b in self.bits)) != 0
        return out


@dataclass(frozen=True)
class Product:
    """A recognised product folder: its sensor, every band file by name, the default bands, the quality layer."""

    folder: str | Path  # a STAC item's file or URL
    sensor: str
    bands: dict[str, Band]
    default: tuple[str, ...]
    quality: MaskRule | None = None
    notes: list[str] = field(default_factory=list)
    #: other names a band is chosen by (normal_name -> band key): a STAC item's asset keys and common names
    aliases: dict[str, str] = field(default_factory=dict)

    def select(self, names: Sequence[str] | None = None) -> list[Band]:
        """The chosen bands in the order given (default: the reflective ones in wavelength order)."""
        wanted = list(names) if names else [b for b in self.default if b in self.bands]
        if not names and (missing := [b for b in self.default if b not in self.bands]) and wanted:
            warnings.warn(f"{self.folder}: {self.sensor} product lacks default band(s) {', '.join(missing)}; "
                          f"stacking the other {len(wanted)}", RsvaeWarning, stacklevel=2)
        out = []
        for name in wanted:
            key = self._key(name)
            if key is None:
                raise InputError(f"{self.folder}: {self.sensor} product has no band {name!r} "
                                 f"(it has {', '.join(sorted(self.bands, key=lambda b: self.bands[b].wavelength))})")
            out.append(self.bands[key])
        if not out:
            raise InputError(f"{self.folder}: none of the default {self.sensor} bands are there; choose with --bands")
        return out

    def _key(self, name: str) -> str | None:
        """The product's band key for a user's band name (case-insensitive; B2 = B02, SR_B2 = B2)."""
        wanted = normal_name(name)
        return next((key for key in self.bands if normal_name(key) == wanted), self.aliases.get(wanted))


def normal_name(name: str) -> str:
    """A band name in one spelling: upper case, no ``SR_``, no leading zero (``sr_b02`` -> ``B2``)."""
    n = name.strip().upper().removeprefix("SR_")
    m = re.fullmatch(r"B0*(\d+|8A)", n)
    return f"B{m.group(1)}" if m else n


#: Folder levels searched for band files (a .SAFE keeps them in GRANULE/*/IMG_DATA/R10m/).
MAX_DEPTH = 5


def _files(folder: Path) -> list[Path]:
    """Raster files in ``folder`` and up to MAX_DEPTH levels below it (unreadable folders skipped), sorted."""
    found = []
    base = len(folder.parts)
    for root, dirs, files in os.walk(folder):
        if len(Path(root).parts) - base >= MAX_DEPTH:
            dirs.clear()
        found.extend(Path(root, f) for f in files if re.search(_RASTER, f, re.I))
    return sorted(found)


def _resolution(match: re.Match, path: Path) -> int:
    """A band file's resolution in m from its name (``_10m``) or folder (``R10m``); 0 when neither says."""
    if match.group(match.lastindex) and match.group(match.lastindex).isdigit():
        return int(match.group(match.lastindex))
    m = re.fullmatch(r"R(\d+)m", path.parent.name)
    return int(m.group(1)) if m else 0


def _finest(found: dict[str, list[tuple[int, Path]]]) -> dict[str, Path]:
    """Per name, the file at the finest resolution (a .SAFE holds B02 at 10, 20 and 60 m)."""
    return {name: min(files, key=lambda rp: (rp[0] or 1e9, str(rp[1])))[1] for name, files in found.items()}


def _sentinel2(folder: Path, files: list[Path]) -> Product | None:
    bands: dict[str, list[tuple[int, Path]]] = {}
    scl: dict[str, list[tuple[int, Path]]] = {}
    for p in files:
        if p.name.upper().startswith("MSK_"):  # QI_DATA's per-band masks (MSK_DETFOO_B02.jp2 ...): no bands
            continue
        if m := _S2_BAND.search(p.name):
            bands.setdefault(m.group(1).upper(), []).append((_resolution(m, p), p))
        elif m := _S2_SCL.search(p.name):
            scl.setdefault("SCL", []).append((_resolution(m, p), p))
    if "B02" not in bands:
        return None
    chosen = _finest(bands)
    quality = MaskRule(_finest(scl)["SCL"], "SCL", values=S2_SCL_INVALID) if scl else None
    return Product(folder, "Sentinel-2", {n: Band(n, p, S2_WAVELENGTHS[n]) for n, p in chosen.items()},
                   S2_DEFAULT, quality)


def _mission(match: re.Match) -> tuple[int, bool]:
    """The Landsat mission number a name's match shows, and whether the name is a pre-collection scene ID."""
    return int(match.group(2) or match.group(3)), match.group(3) is not None


def _landsat(folder: Path, files: list[Path]) -> Product | None:
    named = [p for p in files if _LANDSAT.match(p.name)]
    if not named:
        return None
    mission, pre = _mission(_LANDSAT.match(named[0].name))
    table, default = (OLI_WAVELENGTHS, OLI_DEFAULT) if mission >= 8 else (TM_WAVELENGTHS, TM_DEFAULT)
    level2 = any(_LS_BAND.search(p.name) and _LS_BAND.search(p.name).group(1) for p in named)
    bands: dict[str, Band] = {}
    quality = None
    for p in named:
        if _LS_QA.search(p.name):
            quality = MaskRule(p, "QA_PIXEL", bits=LANDSAT_QA_BITS)
        elif (m := _LS_BAND.search(p.name)) and bool(m.group(1)) == level2 and m.group(2).upper() in table:
            key = m.group(2).upper()
            name = f"SR_{key}" if level2 else key
            bands[name] = Band(name, p, table[key])
    if not bands:
        return None
    default = tuple(f"SR_{b}" if level2 else b for b in default)
    level = "Collection 2 Level-2" if level2 else "pre-collection" if pre else "Level-1"
    return Product(folder, f"Landsat {mission} {level}", bands, default, quality)


def recognise_by_file_names(folder: Path) -> Product | None:
    """The Landsat or Sentinel-2 product in the folder ``folder``, recognised from its file names, or None.
    (``product_folders.recognise`` tries this first, then a folder of STAC assets.)"""
    files = _files(folder)
    return _landsat(folder, files) or _sentinel2(folder, files)


def band_of_file(path: str | Path) -> tuple[str, float] | None:
    """The sensor band a single band file's name shows, with its wavelength (``*_B8A.jp2`` -> ``B8A``, 865),
    or None: band files given one by one are named and tagged like a product folder's."""
    name = Path(str(path)).name
    if (m := _LANDSAT.match(name)) and (b := _LS_BAND.search(name)):
        table = OLI_WAVELENGTHS if _mission(m)[0] >= 8 else TM_WAVELENGTHS
        key = b.group(2).upper()
        return (f"SR_{key}" if b.group(1) else key, table[key]) if key in table else None
    if m := _S2_BAND.search(name):
        return m.group(1).upper(), S2_WAVELENGTHS[m.group(1).upper()]
    return None
