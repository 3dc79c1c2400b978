"""QGIS styles: the QML texts, and real QGIS (PyQGIS, headless) loading a score raster and a detections GeoPackage."""

import json
import os
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from pipeline.detections import detect
from pipeline.detectors import load_detector
from pipeline.scoring import score_raster
from pipeline.styles import BREAKS, raster_qml, vector_qml

SYSTEM_PYTHON = "/usr/bin/python3"
CHECK = Path(__file__).with_name("qgis_check.py")


def _has_pyqgis() -> bool:
    if not os.path.exists(SYSTEM_PYTHON):
        return False
    return subprocess.run([SYSTEM_PYTHON, "-c", "import qgis.core"], capture_output=True).returncode == 0


def test_qml_texts_are_xml_with_the_rarity_classes():
    raster = ET.fromstring(raster_qml(4).split("\n", 1)[1])
    ren = raster.find("pipe/rasterrenderer")
    assert ren.get("band") == "4" and ren.get("type") == "singlebandpseudocolor"
    items = ren.findall("rastershader/colorrampshader/item")
    assert [i.get("value") for i in items] == [f"{b:g}" for b in BREAKS] + ["inf"]
    assert items[0].get("alpha") == "0" and all(i.get("alpha") == "255" for i in items[1:])
    vector = ET.fromstring(vector_qml().split("\n", 1)[1])
    assert vector.find("renderer-v2").get("attr") == "peak_rarity"
    assert vector.find("labeling/settings/text-style").get("fieldName") == "rank"


@pytest.mark.skipif(not _has_pyqgis(), reason="PyQGIS (Debian python3-qgis) not installed")
def test_qgis_loads_scores_and_detections_with_their_styles(model_dir, demo, tmp_path):
    scores, gpkg = tmp_path / "scores.tif", tmp_path / "detections.gpkg"
    score_raster(load_detector(model_dir), demo.test[0], scores)
    n = detect(scores, gpkg, min_rarity=3)
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen", XDG_RUNTIME_DIR=str(tmp_path))
    res = subprocess.run([SYSTEM_PYTHON, str(CHECK), str(scores), str(gpkg)], capture_output=True, text=True,
                         env=env, timeout=120)
    assert res.returncode == 0, res.stderr
    got = json.loads(res.stdout.strip().splitlines()[-1])
    assert got["raster_valid"] and got["raster_renderer"] == "singlebandpseudocolor" and got["raster_band"] == 4
    assert got["raster_breaks"][:4] == list(BREAKS) and got["raster_alpha"][0] == 0
    assert got["vector_valid"] and got["vector_count"] == n > 0
    assert got["vector_renderer"] == "graduatedSymbol" and got["vector_attr"] == "peak_rarity"
    assert got["labels"] and got["label_field"] == "rank"
