"""Atomic file helpers: the swap of two paths that model folders are replaced with."""

import pytest

from pipeline import files
from pipeline.detectors.base import MODEL_FORMAT, write_model_folder


def _folder(path, text):
    path.mkdir()
    (path / "a.txt").write_text(text)
    return path


def test_exchange_swaps_two_folders_in_one_step(tmp_path):
    a, b = _folder(tmp_path / "a", "first"), _folder(tmp_path / "b", "second")
    if not files.exchange(a, b):
        pytest.skip("this kernel or filesystem has no RENAME_EXCHANGE")
    assert (a / "a.txt").read_text() == "second" and (b / "a.txt").read_text() == "first"


def test_exchange_reports_a_missing_path(tmp_path):
    a = _folder(tmp_path / "a", "first")
    if files._renameat2() is None:
        pytest.skip("no renameat2 here")
    with pytest.raises(FileNotFoundError):
        files.exchange(a, tmp_path / "missing")


def _save(folder, value):
    import torch

    meta = {"format": MODEL_FORMAT, "detector": "rx", "bands": 1, "value": value}
    return write_model_folder(folder, meta, {"x": torch.zeros(1)})


@pytest.mark.parametrize("can_exchange", [True, False], ids=["swap", "two renames"])
def test_model_folder_replaced_whole_either_way(tmp_path, monkeypatch, can_exchange):
    """With the atomic swap, or where the system has none (two renames), the new model replaces the old and
    nothing else is left beside it."""
    import json

    from pipeline.detectors import base

    if not can_exchange:
        monkeypatch.setattr(base, "exchange", lambda a, b: False)
    _save(tmp_path / "model", 1)
    _save(tmp_path / "model", 2)
    assert json.loads((tmp_path / "model" / "model.json").read_text())["value"] == 2
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


def test_detectors_import_no_raster_code():
    """Detectors never see a file: importing every detector leaves pipeline.raster unimported."""
    import subprocess
    import sys

    code = ("import sys, pipeline.detectors, pipeline.detectors.vae, pipeline.detectors.rx; "
            "print('pipeline.raster' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
