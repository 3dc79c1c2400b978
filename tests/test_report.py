"""The run summaries: metrics table, mask counts, training curve, quicklooks, and the raster readers behind them."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from pipeline.cli import cli
from pipeline.errors import InputError
from pipeline.raster import iter_band, read_preview
from pipeline.report import mask_counts, metrics_table, plot_training_curve, read_metrics, summarize
from tests.conftest import write_tif

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def png_shape(path: Path) -> tuple[int, int]:
    """(height, width) of a PNG file, checking that it is one."""
    import matplotlib.image

    assert path.read_bytes()[:8] == PNG_MAGIC
    return matplotlib.image.imread(path).shape[:2]


@pytest.fixture(scope="module")
def scored(demo, model_dir, tmp_path_factory):
    """The small demo's test tile scored with the fixture model: (scores, mask, truth) paths."""
    from pipeline.detectors import load_detector
    from pipeline.scoring import score_raster

    out = tmp_path_factory.mktemp("scored")
    tile = demo.test[0]
    scores, mask = out / f"{tile.stem}.tif", out / "masks" / f"{tile.stem}.tif"
    score_raster(load_detector(model_dir), tile, scores, mask_out=mask, fpr=0.01)
    return scores, mask, demo.truth[0]


def mask_file(path: Path, flagged: int, background: int, nodata: int) -> Path:
    """A uint8 mask with the given numbers of 1, 0 and nodata (255) pixels, shuffled."""
    values = np.array([1] * flagged + [0] * background + [255] * nodata, np.uint8)
    np.random.default_rng(1).shuffle(values)
    return write_tif(path, values.reshape(1, 10, -1), nodata=255)


def test_read_metrics_flattens_sections_and_skips_paths(tmp_path):
    path = tmp_path / "t.json"
    path.write_text(json.dumps({
        "roc_auc": 0.93, "pixels": 4096, "best_f1": {"f1": 0.5, "threshold": 2.5},
        "background_suppression": {"auc_snpr": None}, "scores": "s.tif", "truth": "t.tif",
        "plots": {"roc": "roc.png"}, "note": "text",
    }))
    assert read_metrics(path) == {"roc_auc": 0.93, "pixels": 4096, "best_f1.f1": 0.5, "best_f1.threshold": 2.5,
                                  "background_suppression.auc_snpr": None}


@pytest.mark.parametrize("text", ["not json", "[1, 2]"])
def test_read_metrics_rejects_other_files_naming_them(tmp_path, text):
    path = tmp_path / "bad.json"
    path.write_text(text)
    with pytest.raises(InputError, match="bad.json"):
        read_metrics(path)


def test_mask_counts_leave_nodata_out(tmp_path):
    path = mask_file(tmp_path / "m.tif", flagged=7, background=73, nodata=20)
    assert mask_counts(path) == {"valid_pixels": 80, "flagged_pixels": 7}


def test_table_has_a_row_per_tile_with_empty_metrics_where_no_truth(tmp_path):
    masks = [mask_file(tmp_path / "a.tif", 2, 98, 0), mask_file(tmp_path / "b.tif", 10, 80, 10)]
    (tmp_path / "a.json").write_text(json.dumps({"roc_auc": 0.8}))
    rows = metrics_table([tmp_path / "a.json"], masks)
    assert [r["tile"] for r in rows] == ["a", "b"]
    assert rows[0]["roc_auc"] == 0.8 and "roc_auc" not in rows[1]
    assert rows[1]["flagged_fraction"] == pytest.approx(10 / 90)


def test_table_refuses_two_files_for_one_tile(tmp_path):
    (tmp_path / "x").mkdir()
    masks = [mask_file(tmp_path / "x" / "a.tif", 1, 99, 0), mask_file(tmp_path / "a.tif", 1, 99, 0)]
    with pytest.raises(InputError, match="tile 'a'"):
        metrics_table([], masks)


def test_summarize_command_writes_table_html_and_curve(tmp_path, scored, model_dir):
    from pipeline.evaluate import evaluate

    scores, mask, truth = scored
    metrics = evaluate(scores, truth, tmp_path / f"{scores.stem}.json")
    other = mask_file(tmp_path / "other.tif", 3, 97, 0)
    out = tmp_path / "summary.csv"
    result = CliRunner().invoke(cli, ["summarize", str(tmp_path / f"{scores.stem}.json"), "--mask", str(mask),
                                      "--mask", str(other), "--model", str(model_dir), "-o", str(out),
                                      "--html", str(tmp_path / "s.html"), "--plot", str(tmp_path / "c.png")])
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(out.open()))
    assert [r["tile"] for r in rows] == sorted([scores.stem, "other"])
    row = next(r for r in rows if r["tile"] == scores.stem)
    assert float(row["roc_auc"]) == pytest.approx(metrics["roc_auc"], rel=1e-5)
    assert int(row["flagged_pixels"]) == mask_counts(mask)["flagged_pixels"]
    assert next(r for r in rows if r["tile"] == "other")["roc_auc"] == ""
    assert "<table>" in (tmp_path / "s.html").read_text()
    assert min(png_shape(tmp_path / "c.png")) > 100


def test_summarize_needs_inputs_and_a_model_for_the_curve(tmp_path):
    with pytest.raises(InputError, match="nothing to summarize"):
        summarize([], [], tmp_path / "s.csv")
    mask = mask_file(tmp_path / "a.tif", 1, 99, 0)
    result = CliRunner().invoke(cli, ["summarize", "--mask", str(mask), "-o", str(tmp_path / "s.csv"),
                                      "--plot", str(tmp_path / "c.png")])
    assert result.exit_code != 0 and "needs --model" in result.output
    assert not (tmp_path / "s.csv").exists()


def test_training_curve_of_a_detector_without_epochs_is_a_note(tmp_path):
    import torch

    from pipeline.detectors.base import MODEL_FORMAT, write_model_folder

    folder = write_model_folder(tmp_path / "rx", {"format": MODEL_FORMAT, "detector": "rx", "bands": 2,
                                                  "band_names": ["a", "b"]}, {"mean": torch.zeros(2)})
    plot_training_curve(folder, tmp_path / "c.png")
    assert min(png_shape(tmp_path / "c.png")) > 100


def test_quicklook_command_draws_scores_with_mask(tmp_path, scored):
    scores, mask, _ = scored
    out = tmp_path / "q.png"
    result = CliRunner().invoke(cli, ["quicklook", str(scores), "--mask", str(mask), "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert min(png_shape(out)) > 100
    assert not list(tmp_path.glob(".*tmp*")), "temporary files left behind"


def test_quicklook_of_an_all_nodata_raster_still_draws(tmp_path):
    path = write_tif(tmp_path / "empty.tif", np.full((1, 8, 8), -9999, np.float32), nodata=-9999)
    from pipeline.report import quicklook

    quicklook(path, tmp_path / "q.png")
    assert min(png_shape(tmp_path / "q.png")) > 50


def test_quicklook_refuses_a_mask_of_another_grid(tmp_path, scored):
    from pipeline.report import quicklook

    other = mask_file(tmp_path / "m.tif", 1, 99, 0)
    with pytest.raises(InputError, match="grid differs"):
        quicklook(scored[0], tmp_path / "q.png", mask=other)
    assert not (tmp_path / "q.png").exists()


def test_read_preview_shrinks_and_masks_invalid_pixels(tmp_path):
    data = np.arange(64 * 48, dtype=np.float32).reshape(1, 48, 64)
    data[0, :, :8] = -9999
    data[0, 40:, :] = np.nan
    path = write_tif(tmp_path / "r.tif", data, nodata=-9999)
    full = read_preview(path, max_size=1024)
    assert full.shape == (48, 64)
    assert full.mask[:, :8].all() and full.mask[40:].all() and not full.mask[:40, 8:].any()
    small = read_preview(path, max_size=16)
    assert max(small.shape) == 16 and small.shape == (12, 16)
    with pytest.raises(InputError, match="no band 2"):
        read_preview(path, band=2)


def test_iter_band_visits_every_pixel_once(tmp_path):
    data = np.random.default_rng(0).random((1, 300, 700)).astype(np.float32)
    path = write_tif(tmp_path / "r.tif", data, tiled=True, blockxsize=256, blockysize=256)
    blocks = list(iter_band(path))
    assert len(blocks) > 1
    assert sum(b.size for b in blocks) == 300 * 700
    assert sum(float(b.sum()) for b in blocks) == pytest.approx(float(data.sum()), rel=1e-5)


def test_table_counts_each_tiles_detections(tmp_path, scored):
    from pipeline.detections import detect, read

    scores, mask, _ = scored
    folder = tmp_path / "detections"
    folder.mkdir()
    gpkg = folder / f"{scores.stem}.gpkg"
    n = detect(scores, gpkg, min_rarity=2.5)
    peaks = [r["peak_rarity"] for r in read(gpkg)[0]]
    quiet = write_tif(tmp_path / "quiet.tif", np.zeros((4, 8, 8), np.float32))
    import rasterio

    with rasterio.open(quiet, "r+") as ds:
        ds.descriptions = ("score", "reconstruction", "kl", "rarity")
    detect(quiet, folder / "quiet.gpkg")
    rows = {r["tile"]: r for r in metrics_table(masks=[mask], detections=[gpkg, folder / "quiet.gpkg"])}
    row = rows[scores.stem]
    assert row["detections"] == n > 0 and row["flagged_pixels"] == mask_counts(mask)["flagged_pixels"]
    assert row["detections_rarity_ge_4"] == sum(p >= 4 for p in peaks) and row["top_rarity"] == max(peaks)
    assert rows["quiet"]["detections"] == 0 and rows["quiet"]["top_rarity"] is None


def test_summary_parts_merge_into_one_table(tmp_path, scored):
    """Per-batch tables merged with --part give the table of all tiles at once (the workflow's way at scale)."""
    import shutil

    from pipeline.evaluate import evaluate

    scores, mask, truth = scored
    metrics = tmp_path / f"{scores.stem}.json"
    evaluate(scores, truth, metrics)
    other = shutil.copy(mask, tmp_path / "other.tif")
    summarize([metrics], [mask], tmp_path / "a.csv")
    summarize([], [other], tmp_path / "b.csv")
    merged = summarize([], [], tmp_path / "all.csv", parts=[tmp_path / "b.csv", tmp_path / "a.csv"])
    summarize([metrics], [mask, other], tmp_path / "direct.csv")
    assert [r["tile"] for r in merged] == sorted([scores.stem, "other"])
    assert (tmp_path / "all.csv").read_text() == (tmp_path / "direct.csv").read_text()
    row = {r["tile"]: r for r in merged}[scores.stem]
    assert isinstance(row["valid_pixels"], int) and 0.5 < row["roc_auc"] <= 1  # numbers again, not text
    with pytest.raises(InputError, match="is also in"):
        summarize([], [mask], tmp_path / "dup.csv", parts=[tmp_path / "a.csv"])
