"""Which product a folder holds: Sentinel-2 or Landsat by their file names (``products``), else downloaded STAC
assets named by key (``stac``). Above both, so neither imports the other back."""

from __future__ import annotations

from pathlib import Path

from pipeline.errors import InputError
from pipeline.products import Product, recognise_by_file_names
from pipeline.stac import folder_product


def recognise(folder: str | Path) -> Product:
    """The product in ``folder``, recognised from its file names; InputError when it is none rsvae knows."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{folder}: not a folder")
    # else downloaded STAC assets named by key (B02.tif, blue.tif, scl.tif, ...)
    product = recognise_by_file_names(folder) or folder_product(folder)
    if product is None:
        raise InputError(f"no Sentinel-2 or Landsat band files in {folder}; give the band files instead")
    return product
