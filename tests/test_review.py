"""The review page: self-contained HTML with one chip and spectrum picture per detection; band choice for colour."""

import base64
import re

import pytest
from click.testing import CliRunner

from pipeline.cli import cli
from pipeline.detections import detect
from pipeline.detectors import load_detector
from pipeline.errors import InputError
from pipeline.review import rgb_bands, write_review
from pipeline.scoring import score_raster


def test_rgb_bands_by_wavelength_else_spread():
    assert rgb_bands([443, 490, 560, 665, 705, 842], 6) == [3, 2, 1]
    assert rgb_bands([1000.0, 1500.0, 2000.0, 2500.0], 4) == [3, 2, 0]  # no visible bands: spread
    assert rgb_bands(None, 10) == [9, 5, 0] and rgb_bands(None, 1) == [0, 0, 0]


@pytest.fixture(scope="module")
def detections(model_dir, demo, tmp_path_factory):
    folder = tmp_path_factory.mktemp("review")
    scores = folder / "tile_000.tif"
    score_raster(load_detector(model_dir), demo.test[0], scores)
    n = detect(scores, folder / "d.gpkg", min_rarity=3)
    return folder / "d.gpkg", n


def test_review_page_embeds_a_picture_per_detection(detections, tmp_path):
    gpkg, n = detections
    assert n >= 3
    out = tmp_path / "review.html"
    res = CliRunner().invoke(cli, ["review", str(gpkg), "-o", str(out), "-n", "3"])
    assert res.exit_code == 0, res.output
    page = out.read_text()
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    assert len(images) == 3 and all(base64.b64decode(i).startswith(b"\x89PNG") for i in images)
    assert "http" not in page.replace("http://", "")  # nothing fetched from elsewhere
    assert page.count("<th>peak_rarity</th>") == 3


def test_review_names_a_missing_tile(detections, tmp_path):
    gpkg, _ = detections
    with pytest.raises(InputError, match=r"input tile of 'tile_000' not found.*--tile"):
        _moved(gpkg, tmp_path)


def _moved(gpkg, tmp_path):
    """Review a copy of the detections whose recorded input path no longer exists."""
    import shutil
    import sqlite3

    copy = tmp_path / "d.gpkg"
    shutil.copy(gpkg, copy)
    with sqlite3.connect(copy) as db:
        db.execute("UPDATE gpkg_metadata SET metadata = replace(metadata, 'tile_000.tif', 'gone.tif')")
    db.close()
    write_review(copy, tmp_path / "r.html", count=1)
