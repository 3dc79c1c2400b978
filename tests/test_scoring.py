"""Streaming scoring: georeference kept, nodata where invalid, scores equal the in-memory API, mask by fpr."""

import numpy as np
import pytest
import rasterio

from pipeline.detectors import load_detector
from pipeline.detectors.base import Scorer
from pipeline.errors import InputError
from pipeline.scorer import saved_halo
from pipeline.scoring import read_blocks, score_raster
from tests.conftest import write_tif


def test_georeference_nodata_and_values(model_dir, demo, tmp_path):
    det = load_detector(model_dir)
    out, mask = tmp_path / "s.tif", tmp_path / "m.tif"
    summary = score_raster(det, demo.test[0], out, mask_out=mask, fpr=0.01)
    with rasterio.open(demo.test[0]) as src, rasterio.open(out) as ds, rasterio.open(mask) as m:
        assert ds.crs == src.crs and ds.transform == src.transform and ds.nodata == src.nodata
        assert ds.count == 4 and ds.dtypes[0] == "float32"
        assert ds.descriptions == ("score", "reconstruction", "kl", "rarity")
        data = src.read()
        valid = (data != src.nodata).all(0)
        scores = ds.read()
        assert (scores[:, ~valid] == ds.nodata).all()
        direct = det.score(data[:, valid].T)
        assert np.allclose(scores[0][valid], direct["score"], rtol=5e-5)  # band-major vs pixel-major fp32 order
        mk = m.read(1)
        assert (mk[~valid] == 255).all()
        assert np.array_equal(mk[valid] == 1, scores[0][valid] > summary.threshold)
        # the rarity band is the calibration's lookup of the score band, and QGIS gets a style for it
        np.testing.assert_array_equal(scores[3][valid], det.rarity_table()(scores[0][valid]))
    assert summary.valid_pixels == int(valid.sum())
    assert 'band="4"' in out.with_suffix(".qml").read_text()


def test_anomalies_score_higher(model_dir, demo, tmp_path):
    from sklearn.metrics import roc_auc_score

    det = load_detector(model_dir)
    out = tmp_path / "s.tif"
    score_raster(det, demo.test[0], out)
    with rasterio.open(out) as ds, rasterio.open(demo.truth[0]) as t:
        s, y = ds.read(1), t.read(1)
        valid = s != ds.nodata
    assert roc_auc_score(y[valid], s[valid]) > 0.9  # a briefly trained model on 16 bands; the CLI test checks 0.98


def test_band_mismatch_names_file_and_counts(model_dir, tmp_path):
    tif = write_tif(tmp_path / "eight.tif", np.ones((8, 16, 16), np.float32))
    with pytest.raises(InputError, match=r"eight.tif: has 8 bands but the model was trained on 16"):
        score_raster(load_detector(model_dir), tif, tmp_path / "o.tif")
    assert not (tmp_path / "o.tif").exists()


def test_mask_needs_fpr(model_dir, demo, tmp_path):
    with pytest.raises(InputError, match="--fpr"):
        score_raster(load_detector(model_dir), demo.test[0], tmp_path / "o.tif", mask_out=tmp_path / "m.tif")


# ---- the streaming loop: deterministic whatever the threads, generic over detectors, margins for neighbours

class BandSum(Scorer):
    """A detector with only the generic ``score(pixels (n, bands))``: the sum of the bands."""

    kind = "band-sum"
    outputs = ("score", "first")
    meta: dict = {}

    def check_bands(self, count, source):
        pass

    def score(self, pixels, **_):
        return {"score": pixels.sum(axis=1, dtype=np.float32), "first": pixels[:, 0].astype(np.float32)}


class NeighbourSum(BandSum):
    """A detector that needs neighbours: the sum of band 1 over each pixel's 3x3 neighbourhood in the raster."""

    kind = "neighbour-sum"
    outputs = ("score",)
    halo = 1

    def score_block(self, data, valid):
        from scipy.ndimage import convolve

        h = self.halo  # data and valid carry exactly `halo` pixels of margin on every side
        return {"score": convolve(np.where(valid, data[0], 0.0), np.ones((3, 3)), mode="constant")[h:-h, h:-h]}


def _tiled_raster(tmp_path, rows=100, cols=130):
    data = np.random.default_rng(3).normal(size=(4, rows, cols)).astype(np.float32)
    data[:, 40, 50] = -9999.0
    return data, write_tif(tmp_path / "in.tif", data, nodata=-9999.0, tiled=True, blockxsize=32, blockysize=32)


def test_scores_identical_whatever_the_reader_threads(model_dir, demo, tmp_path):
    det = load_detector(model_dir)
    runs = []
    for readers in (0, 1, 3):
        out = tmp_path / f"s{readers}.tif"
        score_raster(det, demo.test[0], out, readers=readers)
        with rasterio.open(out) as ds:
            runs.append((ds.read(), [ds.tags(b) for b in (1, 2, 3, 4)]))
    for data, tags in runs[1:]:
        assert np.array_equal(data, runs[0][0]) and tags == runs[0][1]


def test_blocks_read_ahead_score_as_blocks_read_by_the_scorer(model_dir, demo, tmp_path):
    """``rsvae score`` starts reading a tile before torch loads: the same raster as reading it in score_raster,
    and a reader with another margin than the detector's halo is refused, not used."""
    det = load_detector(model_dir)
    score_raster(det, demo.test[0], tmp_path / "plain.tif")
    with read_blocks(demo.test[0], saved_halo(model_dir)) as ahead:
        score_raster(det, demo.test[0], tmp_path / "ahead.tif", blocks=ahead)
    with rasterio.open(tmp_path / "plain.tif") as a, rasterio.open(tmp_path / "ahead.tif") as b:
        assert np.array_equal(a.read(), b.read()) and a.tags(1) == b.tags(1)
    with read_blocks(demo.test[0], 2) as wrong, pytest.raises(ValueError, match="margin of 2.*margin of 0"):
        score_raster(det, demo.test[0], tmp_path / "wrong.tif", blocks=wrong)
    assert not (tmp_path / "wrong.tif").exists()
    data, path = _tiled_raster(tmp_path)  # a halo detector: the margin reader, read ahead
    score_raster(NeighbourSum(), path, tmp_path / "n_plain.tif")
    with read_blocks(path, NeighbourSum.halo) as ahead:
        score_raster(NeighbourSum(), path, tmp_path / "n_ahead.tif", blocks=ahead)
    with rasterio.open(tmp_path / "n_plain.tif") as a, rasterio.open(tmp_path / "n_ahead.tif") as b:
        assert np.array_equal(a.read(), b.read())


def test_saved_halo_reads_model_json_alone(model_dir, tmp_path):
    assert saved_halo(model_dir) == load_detector(model_dir).halo == 0
    assert saved_halo(tmp_path / "absent") is None
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "model.json").write_text("{not json")
    assert saved_halo(tmp_path / "bad") is None


def test_generic_detector_without_fast_path(tmp_path):
    data, path = _tiled_raster(tmp_path)
    out = tmp_path / "o.tif"
    summary = score_raster(BandSum(), path, out, mask_out=None)
    valid = (data != -9999.0).all(0)
    with rasterio.open(out) as ds:
        s = ds.read()
        assert ds.descriptions == ("score", "first")
        np.testing.assert_allclose(s[0][valid], data[:, valid].sum(0), rtol=1e-6)
        np.testing.assert_array_equal(s[1][valid], data[0][valid])
        assert (s[:, ~valid] == -9999.0).all()
        assert float(ds.tags(2)["STATISTICS_MAXIMUM"]) == pytest.approx(float(data[0][valid].max()))
    assert summary.valid_pixels == int(valid.sum()) and summary.finish_seconds > 0


def test_detector_with_a_halo_sees_neighbours_across_windows(tmp_path):
    from scipy.ndimage import convolve

    data, path = _tiled_raster(tmp_path)
    out = tmp_path / "o.tif"
    score_raster(NeighbourSum(), path, out)
    valid = (data != -9999.0).all(0)
    expected = convolve(np.where(valid, data[0], 0.0), np.ones((3, 3)), mode="constant")
    with rasterio.open(out) as ds:
        s = ds.read(1)
    np.testing.assert_allclose(s[valid], expected[valid], rtol=1e-5, atol=1e-5)
    assert (s[~valid] == -9999.0).all()


def test_unreadable_block_leaves_no_output(model_dir, tmp_path):
    data = np.random.default_rng(4).normal(size=(16, 256, 256)).astype(np.float32)
    path = write_tif(tmp_path / "bad.tif", data, tiled=True, blockxsize=32, blockysize=32, compress="deflate")
    size = path.stat().st_size
    with open(path, "r+b") as f:
        f.seek(size // 2)
        f.write(b"\x00\xff" * (size // 8))
    with pytest.raises(InputError, match="bad.tif: could not read window"):
        score_raster(load_detector(model_dir), path, tmp_path / "o.tif")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.tif"]


def test_posterior_samples_are_seeded(model_dir, demo, tmp_path):
    det = load_detector(model_dir)
    outs = []
    for name, samples, seed in (("a", 3, 1), ("b", 3, 1), ("c", 1, 1)):
        score_raster(det, demo.test[0], tmp_path / f"{name}.tif", samples=samples, seed=seed)
        with rasterio.open(tmp_path / f"{name}.tif") as ds:
            outs.append(ds.read())
    assert np.array_equal(outs[0], outs[1])  # same seed, same draws
    np.testing.assert_allclose(outs[0][2], outs[2][2], rtol=1e-4, atol=1e-4)  # the KL term does not sample
    assert not np.array_equal(outs[0][1], outs[2][1])  # the reconstruction term does


def test_scores_and_mask_are_renamed_together_once_both_are_complete(model_dir, demo, tmp_path, monkeypatch):
    """Both COGs are finished before either is renamed into place, and the two renames follow each other."""
    import os

    import rasterio.shutil

    from pipeline import cog_writer

    events: list[str] = []
    real_copy, real_replace = rasterio.shutil.copy, os.replace

    def copy(src, dst, **kw):
        real_copy(src, dst, **kw)
        events.append("cog")

    def replace(src, dst):
        real_replace(src, dst)
        events.append(f"rename {os.path.basename(dst)}")

    monkeypatch.setattr(cog_writer.rasterio.shutil, "copy", copy)
    monkeypatch.setattr(cog_writer.os, "replace", replace)
    det = load_detector(model_dir)
    score_raster(det, demo.test[0], tmp_path / "s.tif", mask_out=tmp_path / "m.tif", fpr=0.01)
    assert events == ["cog", "cog", "rename s.tif", "rename m.tif", "rename s.qml"]  # the style once both are in


def test_when_one_of_the_pair_fails_neither_is_replaced(model_dir, demo, tmp_path, monkeypatch):
    """When the score raster cannot be finished (its mask already is), neither output is replaced and no temporary
    is left: a new mask never lands beside the previous scores."""
    from pipeline import cog_writer
    from pipeline.errors import OutputError

    det = load_detector(model_dir)
    (tmp_path / "s.tif").write_bytes(b"previous scores")
    (tmp_path / "m.tif").write_bytes(b"previous mask")
    real_check = cog_writer.check_complete

    def check(path):
        name = str(path).rsplit("/", 1)[-1]
        if name.startswith(".s.tif.") and name.endswith(".cog.tif"):  # the score raster's finished COG
            raise OutputError(f"{path}: simulated failure")
        real_check(path)

    monkeypatch.setattr(cog_writer, "check_complete", check)
    with pytest.raises(OutputError, match="simulated"):
        score_raster(det, demo.test[0], tmp_path / "s.tif", mask_out=tmp_path / "m.tif", fpr=0.01)
    assert (tmp_path / "s.tif").read_bytes() == b"previous scores"
    assert (tmp_path / "m.tif").read_bytes() == b"previous mask"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.tif", "s.tif"]


def test_a_failed_rename_is_one_error_and_leaves_nothing(model_dir, demo, tmp_path, monkeypatch):
    """If the second output cannot be renamed into place, the error names it and no temporary stays behind."""
    import os

    from pipeline import cog_writer
    from pipeline.errors import OutputError

    real_replace = os.replace

    def replace(src, dst):
        if str(dst).endswith("m.tif"):
            raise PermissionError(13, "Permission denied")
        real_replace(src, dst)

    monkeypatch.setattr(cog_writer.os, "replace", replace)
    with pytest.raises(OutputError, match=r"m\.tif: cannot put the output in place \(Permission denied\)"):
        score_raster(load_detector(model_dir), demo.test[0], tmp_path / "s.tif", mask_out=tmp_path / "m.tif",
                     fpr=0.01)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.tif"]


def test_the_scorer_contract_has_defaults_for_all_but_score():
    """What the scorer asks of a detector is written in detectors/base.Scorer: a Scorer with only ``score`` gets the
    band-major path, no halo, an empty origin and no rarity band; detectors are Scorers that are also saved, and the
    generative side's adapter is a Scorer only (it refuses nothing of a contract it does not take)."""
    from pipeline.detectors import LRXDetector, RXDetector, VAEDetector
    from pipeline.detectors.base import Detector
    from pipeline.generative import LatentMeans

    s = BandSum()
    pixels = np.arange(12, dtype=np.float32).reshape(3, 4)  # (bands, n)
    assert {k: v.tolist() for k, v in s.score_bands(pixels).items()} == {"score": [12, 15, 18, 21], "first": [0, 1, 2, 3]}
    assert s.halo == 0 and dict(s.origin) == {} and not s.has_rarity and s.rarity_table() is None
    assert all(issubclass(c, Detector) for c in (VAEDetector, RXDetector, LRXDetector))
    assert Detector.has_rarity is not Scorer.has_rarity  # detectors: a rarity band for their `score`
    assert issubclass(LatentMeans, Scorer) and not issubclass(LatentMeans, Detector)
    assert not hasattr(LatentMeans, "tensors")


def test_a_scorer_without_torch_streams_without_loading_it(tmp_path):
    """The scoring contract (``pipeline.scorer``) and the streaming scorer import no torch: a numpy-only Scorer
    scores a raster in a process where torch is never loaded."""
    import subprocess
    import sys

    src = write_tif(tmp_path / "in.tif", np.arange(2 * 20 * 30, dtype=np.float32).reshape(2, 20, 30), nodata=-1.0)
    code = f"""
import sys
import numpy as np
import rasterio
from pipeline.scorer import Scorer
from pipeline.scoring import score_raster

class Sum(Scorer):
    kind = "sum"
    band_names = ["a", "b"]
    meta = {{}}
    def score(self, pixels, **options):
        return {{"score": pixels.sum(axis=1, dtype=np.float32)}}

score_raster(Sum(), {str(src)!r}, {str(tmp_path / "out.tif")!r})
with rasterio.open({str(tmp_path / "out.tif")!r}) as ds:
    print(float(ds.read(1)[1, 2]), "torch" in sys.modules)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == [str(float(32 + 632)), "False"]  # bands 1 and 2 at row 1, col 2: 32 and 600 + 32
