"""Names of raster inputs (pipeline/names.py): GDAL's own name for a URL, without rasterio."""

import subprocess
import sys

import pytest

from pipeline.names import gdal_name


@pytest.mark.parametrize("name, gdal", [
    ("https://host/a/x.tif?sig=abc&x=1", "/vsicurl/https://host/a/x.tif?sig=abc&x=1"),
    ("http://127.0.0.1:8000/x.tif#part", "/vsicurl/http://127.0.0.1:8000/x.tif"),
    ("ftp://h/x.tif", "/vsicurl/ftp://h/x.tif"),
    ("s3://bucket/key/x.tif", "/vsis3/bucket/key/x.tif"),
    ("gs://b/k.tif", "/vsigs/b/k.tif"),
    ("az://c/b.tif", "/vsiaz/c/b.tif"),
    ("zip+s3://b/a.zip!x.tif", "/vsizip/vsis3/b/a.zip/x.tif"),
    ("zip+https://h/a.zip!/d/x.tif", "/vsizip/vsicurl/https://h/a.zip/d/x.tif"),
    ("zip:///abs/b.zip!c.tif", "/vsizip//abs/b.zip/c.tif"),
    ("file:///tmp/x.tif", "/tmp/x.tif"),
    ("foo://h/x", "foo://h/x"),  # a scheme GDAL has no file system for: unchanged
    ("/vsicurl/https://h/x.tif", "/vsicurl/https://h/x.tif"),
    ("data/x.tif", "data/x.tif"),
])
def test_gdal_name_maps_urls_as_rasterio_open_does(name, gdal):
    assert gdal_name(name) == gdal


def test_naming_imports_no_gdal():
    """The ground floor of raster I/O: path planning (the workflow) never loads rasterio."""
    code = ("import sys, pipeline.names, pipeline.workflow, pipeline.batch; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('rasterio', 'osgeo')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
