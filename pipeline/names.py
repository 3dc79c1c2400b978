"""Names of raster inputs, without GDAL: local file or GDAL dataset name, a tile's short name, GDAL's own name.

The ground floor of raster I/O: imports nothing of rasterio, so path planning (the workflow, batches) stays light.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from urllib.parse import urlsplit

#: A URL scheme (http://, s3://, gs://, ...): rasterio maps these to GDAL's /vsicurl/, /vsis3/, ... itself.
_URL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")
#: A driver-prefixed subdataset name (SENTINEL2_L2A:..., NETCDF:..., HDF5:...); two or more characters, so a
#: Windows drive letter is not one.
_SUBDATASET = re.compile(r"^[A-Za-z][A-Za-z0-9_]+:")


def is_dataset_name(path: str | Path) -> bool:
    """Whether ``path`` names a GDAL dataset that is no local file: a /vsi path, a URL or a subdataset name.

    The one place that decides "local file or GDAL dataset name": local paths get the file checks (missing,
    folder, empty), dataset names go to GDAL as they are. An existing local file always counts as local.
    """
    text = os.fspath(path)
    if text.startswith("/vsi") or _URL.match(text):
        return True
    return bool(_SUBDATASET.match(text)) and not os.path.exists(text)


def tile_name(path: str | Path) -> str:
    """A short name of a tile for output file names and tables: the file name without extension.

    Works for dataset names too: ``https://host/a/x.tif?sig=...`` -> ``x``, ``/vsizip/s.zip/x.tif`` -> ``x``,
    ``SENTINEL2_L2A:/d/S2A_X.SAFE/MTD_MSIL2A.xml:10m:EPSG_32632`` -> ``S2A_X_10m_EPSG_32632``.
    """
    text = os.fspath(path)
    if is_dataset_name(text) and _SUBDATASET.match(text) and not _URL.match(text):
        _, rest = text.split(":", 1)
        rest = rest.strip('"')
        file, _, extra = rest.partition(":")
        folder = Path(file).parent.name if Path(file).suffix.lower() == ".xml" else Path(file).name
        base = re.sub(r"\.(safe|zip)$", "", folder or Path(file).stem, flags=re.I)
        parts = [base, *(p for p in re.split(r"[:/]", extra) if p)]
        return re.sub(r"[^A-Za-z0-9._-]+", "_", "_".join(parts))
    if _URL.match(text):
        text = re.split(r"[?#]", text, maxsplit=1)[0]
    name = Path(text.rstrip("/")).name
    stem = name.rsplit(".", 1)[0] if "." in name else name
    return re.sub(r"[^A-Za-z0-9._-]+", "_", stem) or "tile"


#: URL schemes and the GDAL virtual file system each maps to, as rasterio.open maps them (``zip+https://`` chains
#: them: /vsizip/vsicurl/...); a URL with any other scheme goes to GDAL unchanged.
VSI_SCHEMES = {"ftp": "curl", "http": "curl", "https": "curl", "s3": "s3", "gs": "gs", "az": "az", "oss": "oss",
               "gzip": "gzip", "tar": "tar", "zip": "zip", "file": "file"}


def gdal_name(path: str | Path) -> str:
    """The name GDAL itself opens for ``path``: URLs as rasterio maps them (``https://`` -> ``/vsicurl/https://``,
    ``s3://b/k`` -> ``/vsis3/b/k``, ``zip+s3://b/a.zip!x.tif`` -> ``/vsizip/vsis3/b/a.zip/x.tif``), everything else
    unchanged. For names written where GDAL, not rasterio, reads them (a VRT's sources)."""
    text = os.fspath(path)
    if not _URL.match(text):
        return text
    try:
        parts = urlsplit(text)
    except ValueError:  # not a URL after all (a bad IPv6 host): GDAL gets it as it is
        return text
    schemes = parts.scheme.lower().split("+")
    if not all(s in VSI_SCHEMES for s in schemes):
        return text
    path, archive = parts.path + (f"?{parts.query}" if parts.query else ""), None
    if schemes[0] in ("gzip", "tar", "zip") and "!" in path:
        archive, path = path.rsplit("!", 1)
    if parts.netloc:
        archive, path = (parts.netloc + archive, path) if archive else (None, parts.netloc + path)
    prefix = "/".join(f"vsi{VSI_SCHEMES[s]}" for s in schemes if s != "file")
    if not prefix:
        return path
    curl = f"{schemes[-1]}://" if VSI_SCHEMES[schemes[-1]] == "curl" else ""
    return f"/{prefix}/{curl}{archive}/{path.lstrip('/')}" if archive else f"/{prefix}/{curl}{path}"


def file_name(path: str | Path) -> str:
    """The file name of a tile as recorded in samples and score tags: the local file's name, or for a dataset
    name (URL, /vsi path, subdataset) its ``tile_name``."""
    return tile_name(path) if is_dataset_name(path) else Path(path).name
