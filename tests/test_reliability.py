"""Bad input, broken model folders, bad configs and failing outputs, each fed to the real CLI.

Every failure must exit non-zero with one line, ``Error: FILE: problem``, and no traceback; nothing at the output
path may be created or changed (checked with no earlier output and with one). Tiles that can be scored (no CRS,
invalid pixels, integer or extreme values) must give nodata exactly where pixels are invalid and a finite score
everywhere else.
"""

from __future__ import annotations

import errno
import hashlib
import os
import pathlib
import pickle
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest
import rasterio
from click.testing import CliRunner, Result
from rasterio.transform import from_origin

from pipeline.cli import cli
from tests.conftest import write_tif

BANDS = 16  # the conftest model's band count


# --------------------------------------------------------------------------------------------- helpers


def rsvae(*args: object) -> Result:
    """Run the CLI in-process, as a user would type it."""
    return CliRunner().invoke(cli, [str(a) for a in args])


def snapshot(folder: Path) -> dict[str, str]:
    """Every file and folder under ``folder`` (hidden temporaries included) with a digest of its content."""
    if not folder.exists():
        return {}
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "/"
            for p in sorted(folder.rglob("*"))}


def plant_earlier(out: Path) -> None:
    """Put an earlier result at ``out``: a file for a raster or sample, a folder for a model."""
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix:
        out.write_bytes(b"an earlier, complete result")
    else:
        out.mkdir()
        (out / "model.json").write_text('{"earlier": true}')


def assert_one_line_error(result: Result, names: object, *says: str, code: int | None = None) -> str:
    """A handled failure: non-zero exit, one ``Error:`` line naming ``names`` and saying ``says``, no traceback."""
    assert result.exit_code != 0, result.output
    if code is not None:
        assert result.exit_code == code, result.output
    assert isinstance(result.exception, SystemExit), f"unhandled {result.exception!r}"
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    line = lines[0]
    assert line.startswith("Error: "), line
    assert str(names) in line, line
    for word in says:
        assert word.lower() in line.lower(), line
    return line


def fails_cleanly(args: list[object], out: Path, names: object, *says: str, code: int | None = None) -> None:
    """Run ``args`` with no file at ``out``, then with an earlier result there: both fail cleanly, and the
    output folder is exactly as before each run (no file created, the earlier one unchanged, no temporaries)."""
    for earlier in (False, True):
        if earlier:
            plant_earlier(out)
        before = snapshot(out.parent)
        assert_one_line_error(rsvae(*args), names, *says, code=code)
        assert snapshot(out.parent) == before
    shutil.rmtree(out.parent)


def read(path: Path) -> tuple[np.ndarray, rasterio.profiles.Profile]:
    with rasterio.open(path) as ds:
        return ds.read(), ds.profile


def assert_scores(out: Path, valid: np.ndarray) -> None:
    """Nodata in every band exactly where ``valid`` is False; finite values that are not nodata elsewhere."""
    data, prof = read(out)
    nodata = prof["nodata"]
    assert nodata is not None and np.isfinite(nodata)
    assert data.shape[1:] == valid.shape
    assert (data[:, ~valid] == nodata).all()
    assert np.isfinite(data[:, valid]).all()
    assert (data[:, valid] != nodata).all()


@pytest.fixture()
def out_dir(tmp_path: Path) -> Path:
    return tmp_path / "out"


# --------------------------------------------------------------------------------------------- unreadable files


def _missing(d: Path) -> Path:
    return d / "missing.tif"


def _folder(d: Path) -> Path:
    (d / "folder.tif").mkdir()
    return d / "folder.tif"


def _empty(d: Path) -> Path:
    (d / "empty.tif").write_bytes(b"")
    return d / "empty.tif"


def _text(d: Path) -> Path:
    (d / "notes.tif").write_text("this is a text file, not a GeoTIFF\n")
    return d / "notes.tif"


def _tiff_bytes(d: Path) -> bytes:
    data = np.random.default_rng(0).random((BANDS, 128, 128)).astype(np.float32)
    return write_tif(d / "whole.tif", data, tiled=True, blockxsize=32, blockysize=32, compress="deflate").read_bytes()


def _truncated_header(d: Path) -> Path:
    (d / "cut_header.tif").write_bytes(_tiff_bytes(d)[:200])
    return d / "cut_header.tif"


def _truncated_body(d: Path) -> Path:
    data = _tiff_bytes(d)
    (d / "cut_body.tif").write_bytes(data[: len(data) // 2])
    return d / "cut_body.tif"


BAD_FILES = {
    "missing": (_missing, "not found"),
    "folder": (_folder, "folder"),
    "empty": (_empty, "empty"),
    "text named .tif": (_text, "not a readable raster"),
    "truncated header": (_truncated_header, "not a readable raster"),
    "truncated body": (_truncated_body, "truncated"),
}


@pytest.mark.parametrize("case", BAD_FILES)
def test_score_unreadable_tile(case, model_dir, tmp_path, out_dir):
    make, says = BAD_FILES[case]
    tile = make(tmp_path)
    out = out_dir / "scores.tif"
    fails_cleanly(["score", model_dir, tile, "-o", out], out, tile, says)


@pytest.mark.parametrize("case", BAD_FILES)
def test_ingest_unreadable_tile(case, demo, tmp_path, out_dir):
    make, says = BAD_FILES[case]
    tile = make(tmp_path)
    out = out_dir / "sample.nc"
    # the bad tile after a good one: nothing is written although the first tile was fine
    fails_cleanly(["ingest", demo.normal[0], tile, "-o", out], out, tile, says)


def _nc_text(d: Path) -> Path:
    (d / "sample.nc").write_text("not NetCDF\n")
    return d / "sample.nc"


def _nc_truncated(d: Path, sample_file: Path) -> Path:
    data = sample_file.read_bytes()
    (d / "cut.nc").write_bytes(data[: len(data) // 2])
    return d / "cut.nc"


@pytest.mark.parametrize("case", ["missing", "folder", "empty", "text", "truncated", "a raster"])
def test_train_unreadable_sample(case, sample_file, demo, tmp_path, out_dir):
    make = {"missing": _missing, "folder": _folder, "empty": _empty, "text": _nc_text,
            "truncated": lambda d: _nc_truncated(d, sample_file), "a raster": lambda d: demo.normal[0]}[case]
    sample = make(tmp_path)
    says = {"missing": "not found", "folder": "folder"}.get(case, "not")
    out = out_dir / "model"
    fails_cleanly(["train", sample, "-o", out, "--epochs", "1"], out, sample, says)


def test_debug_shows_the_traceback(model_dir, tmp_path):
    from pipeline.errors import InputError

    result = rsvae("--debug", "score", model_dir, tmp_path / "missing.tif", "-o", tmp_path / "s.tif")
    assert isinstance(result.exception, InputError) and "missing.tif: file not found" in str(result.exception)


# --------------------------------------------------------------------------------------------- tiles that do not fit


def test_band_count_differs(model_dir, tmp_path, out_dir):
    tile = write_tif(tmp_path / "eight.tif", np.ones((8, 32, 32), np.float32))
    out = out_dir / "s.tif"
    fails_cleanly(["score", model_dir, tile, "-o", out, "--mask-out", out_dir / "m.tif", "--fpr", "0.01"],
                  out, tile, "8 bands", "16")


def test_crs_differs(model_dir, demo, tmp_path, out_dir):
    data, _ = read(demo.test[0])
    tile = write_tif(tmp_path / "latlon.tif", data, nodata=-9999.0, crs="EPSG:4326",
                     transform=from_origin(9.0, 45.0, 0.0003, 0.0003))
    out = out_dir / "s.tif"
    fails_cleanly(["score", model_dir, tile, "-o", out], out, tile, "CRS", "EPSG:4326", "EPSG:32632")


@pytest.mark.parametrize("other", ["bands", "crs"])
def test_ingest_tiles_that_do_not_match(other, demo, tmp_path, out_dir):
    data, _ = read(demo.normal[0])
    if other == "bands":
        odd = write_tif(tmp_path / "odd.tif", data[:5], nodata=-9999.0)
        says = ("5 bands", "16")
    else:
        odd = write_tif(tmp_path / "odd.tif", data, nodata=-9999.0, crs="EPSG:32633")
        says = ("CRS",)
    out = out_dir / "s.nc"
    fails_cleanly(["ingest", demo.normal[0], odd, "-o", out], out, odd, *says)


@pytest.mark.parametrize("transform", [None, from_origin(100.0, 200.0, 2.0, 2.0)], ids=["no-transform", "transform"])
def test_no_crs_is_scored_with_a_warning(transform, model_dir, demo, tmp_path, out_dir):
    data, src = read(demo.test[0])
    tile = tmp_path / "bare.tif"
    profile = dict(driver="GTiff", width=data.shape[2], height=data.shape[1], count=BANDS, dtype="float32",
                   nodata=-9999.0)
    if transform is not None:
        profile["transform"] = transform
    with rasterio.open(tile, "w", **profile) as ds:
        ds.write(data)
    out = out_dir / "s.tif"
    result = rsvae("score", model_dir, tile, "-o", out)
    assert result.exit_code == 0, result.output
    warnings = [ln for ln in result.stderr.splitlines() if ln.startswith("Warning:")]
    assert len(warnings) == 1 and str(tile) in warnings[0] and "no CRS" in warnings[0], result.stderr
    assert "NotGeoreferenced" not in result.stderr
    with rasterio.open(out) as ds:
        assert ds.crs is None
        assert ds.transform == (transform or rasterio.Affine.identity())
    assert_scores(out, (data != -9999.0).all(0))


# --------------------------------------------------------------------------------------------- invalid pixels


def test_invalid_pixels_are_nodata_in_every_output(model_dir, demo, tmp_path, out_dir):
    data, _ = read(demo.test[0])  # 64 x 64, nodata -9999 in a strip on the left
    data = data.copy()
    invalid = (data == -9999.0).any(0)
    data[3, 10, 10] = np.nan
    data[5, 11, 20] = np.inf
    data[15, 12, 30] = -np.inf
    data[0, 13, 40] = -9999.0  # nodata in one band only
    for r, c in [(10, 10), (11, 20), (12, 30), (13, 40)]:
        invalid[r, c] = True
    data[:, 48:64, 48:64] = -9999.0  # a fully invalid 16 x 16 block
    invalid[48:64, 48:64] = True
    mask = np.full(invalid.shape, 255, np.uint8)
    mask[30:34, 30:34] = 0  # the dataset mask hides these, whatever their values
    invalid[30:34, 30:34] = True
    tile = tmp_path / "holes.tif"
    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True):
        write_tif(tile, data, nodata=-9999.0, tiled=True, blockxsize=16, blockysize=16)
        with rasterio.open(tile, "r+") as ds:
            ds.write_mask(mask)
    out, mask_out = out_dir / "s.tif", out_dir / "m.tif"
    result = rsvae("score", model_dir, tile, "-o", out, "--mask-out", mask_out, "--fpr", "0.01")
    assert result.exit_code == 0, result.output
    assert f"{int((~invalid).sum())} of {invalid.size} pixels" in result.stderr
    assert_scores(out, ~invalid)
    m, _ = read(mask_out)
    assert (m[0][invalid] == 255).all() and np.isin(m[0][~invalid], [0, 1]).all()


def test_fully_invalid_tile_gives_all_nodata_and_a_warning(model_dir, tmp_path, out_dir):
    data = np.full((BANDS, 40, 40), -9999.0, np.float32)
    data[:, :10] = np.nan  # NaN where not nodata: invalid too
    tile = write_tif(tmp_path / "void.tif", data, nodata=-9999.0)
    out = out_dir / "s.tif"
    result = rsvae("score", model_dir, tile, "-o", out)
    assert result.exit_code == 0, result.output
    warnings = [ln for ln in result.stderr.splitlines() if ln.startswith("Warning:")]
    assert len(warnings) == 1 and str(tile) in warnings[0] and "no valid pixel" in warnings[0]
    assert_scores(out, np.zeros((40, 40), bool))


# --------------------------------------------------------------------------------------------- pixel types


def _tiles_of(dtype: str, rng: np.random.Generator, n: int = 40) -> tuple[np.ndarray, float | None]:
    """4-band tiles of ``dtype`` with a constant band, a band at the type's extremes and some nodata."""
    bands = 4
    if dtype == "float64":
        x = rng.normal(1e30, 1e29, (bands, n, n))  # representable in float32, far beyond usual reflectance
        x[1] = 0.5  # constant band
        x[2] = rng.choice([-1e35, 1e35], (n, n))
        nodata = -1e38
    else:
        info = np.iinfo(dtype)
        x = rng.integers(info.min + 1, info.max, (bands, n, n), endpoint=True).astype(dtype)
        x[1] = info.max  # constant band at the type's maximum
        x[2] = rng.choice([info.min + 1, info.max], (n, n))
        nodata = info.min  # 0 for unsigned types: an output nodata of 0 would hide zero scores
    x = x.astype(dtype)
    x[:, :2, :] = nodata
    return x, nodata


@pytest.mark.parametrize("dtype", ["uint8", "uint16", "int16", "float64"])
def test_pixel_types_train_and_score_without_nan(dtype, tmp_path, out_dir):
    rng = np.random.default_rng(7)
    tiles = []
    for i in range(2):
        x, nodata = _tiles_of(dtype, rng)
        tiles.append(write_tif(tmp_path / f"n{i}.tif", x, nodata=nodata))
    sample, model = tmp_path / "s.nc", tmp_path / "model"
    assert rsvae("ingest", *tiles, "-o", sample, "--max-pixels", "2000").exit_code == 0
    r = rsvae("train", sample, "-o", model, "--epochs", "2", "--hidden", "8", "--latent", "2", "--threads", "1",
              "--device", "cpu")
    assert r.exit_code == 0, r.output
    x, nodata = _tiles_of(dtype, rng)
    if dtype == "float64":  # values beyond float32 and subnormals in a tile to score
        x[0, 5, :] = 1e300
        x[3, 6, :] = -1e300
        x[0, 7, :] = 5e-324
    tile = write_tif(tmp_path / "t.tif", x, nodata=nodata)
    out = out_dir / "s.tif"
    r = rsvae("score", model, tile, "-o", out)
    assert r.exit_code == 0, r.output
    assert_scores(out, (x != nodata).all(0))


def test_float64_training_values_beyond_float32_are_an_input_error(tmp_path, out_dir):
    x = np.ones((4, 20, 20))
    x[0, 3, 3] = 1e300
    tile = write_tif(tmp_path / "huge.tif", x)
    out = out_dir / "s.nc"
    fails_cleanly(["ingest", tile, "-o", out], out, tile, "overflow float32")


def test_complex_pixels_are_refused(model_dir, tmp_path, out_dir):
    tile = write_tif(tmp_path / "cplx.tif", np.ones((BANDS, 8, 8), np.complex64))
    out = out_dir / "s.tif"
    fails_cleanly(["score", model_dir, tile, "-o", out], out, tile, "complex")


# --------------------------------------------------------------------------------------------- model folders


class Payload:
    """Unpickling this creates ``marker``: the proof that a loader executed code from a file."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


def _payload_bytes(marker: Path) -> bytes:
    blob = pickle.dumps(Payload(marker))
    # the payload is live: unpickling it elsewhere does create the file
    probe = marker.with_name("probe-" + marker.name)
    pickle.loads(pickle.dumps(Payload(probe)))
    assert probe.exists()
    probe.unlink()
    return blob


def _torch_payload(marker: Path, path: Path) -> None:
    import torch

    torch.save({"weights": Payload(marker)}, path)  # what torch.load(weights_only=False) would execute


def _json(model: Path, edit) -> None:
    import json

    meta = json.loads((model / "model.json").read_text())
    edit(meta)
    (model / "model.json").write_text(json.dumps(meta))


def _nan_weights(model: Path) -> None:
    from safetensors.torch import load_file, save_file

    t = load_file(str(model / "weights.safetensors"))
    key = next(k for k in t if k.startswith("module."))
    t[key][0] = float("nan")
    save_file(t, str(model / "weights.safetensors"))


MODEL_CASES = {
    # name: (how to break a copy of a good model folder, what the message says, file the message names)
    "missing folder": (lambda m, mk: shutil.rmtree(m), "not found", ""),
    "no weights": (lambda m, mk: (m / "weights.safetensors").unlink(), "missing weights.safetensors", ""),
    "no model.json": (lambda m, mk: (m / "model.json").unlink(), "missing model.json", ""),
    "model.json garbage": (lambda m, mk: (m / "model.json").write_bytes(os.urandom(300)), "corrupted",
                           "model.json"),
    "model.json nested too deep": (lambda m, mk: (m / "model.json").write_text("[" * 100_000 + "]" * 100_000),
                                   "corrupted", "model.json"),
    "model.json not a model": (lambda m, mk: (m / "model.json").write_text('{"format": "other"}'),
                               "not an rsvae model", "model.json"),
    "model.json unknown detector": (lambda m, mk: _json(m, lambda j: j.update(detector=["vae"])),
                                    "unknown detector", ""),
    "model.json bad calibration": (lambda m, mk: _json(m, lambda j: j["calibration"].update(values="x")),
                                   "calibration", "model.json"),
    "model.json other architecture": (lambda m, mk: _json(m, lambda j: j["architecture"].update(hidden=[7])),
                                      "do not match", ""),
    "model.json band names disagree": (lambda m, mk: _json(m, lambda j: j.update(band_names=["a"])),
                                       "band", "model.json"),
    "weights truncated": (lambda m, mk: (m / "weights.safetensors").write_bytes(
        (m / "weights.safetensors").read_bytes()[:500]), "corrupted", "weights.safetensors"),
    "weights hold NaN": (lambda m, mk: _nan_weights(m), "NaN", "weights.safetensors"),
    "weights are a pickle with a payload": (lambda m, mk: (m / "weights.safetensors").write_bytes(
        _payload_bytes(mk)), "corrupted", "weights.safetensors"),
    "weights are a torch.save file with a payload": (lambda m, mk: _torch_payload(mk, m / "weights.safetensors"),
                                                     "corrupted", "weights.safetensors"),
    "model.json is a pickle with a payload": (lambda m, mk: (m / "model.json").write_bytes(_payload_bytes(mk)),
                                              "corrupted", "model.json"),
    "model is a pickle file, not a folder": (lambda m, mk: (shutil.rmtree(m), m.write_bytes(_payload_bytes(mk))),
                                             "not a model folder", ""),
}


@pytest.mark.parametrize("case", MODEL_CASES)
def test_broken_model_folder(case, model_dir, demo, tmp_path, out_dir):
    model = tmp_path / "model"
    shutil.copytree(model_dir, model)
    marker = tmp_path / f"executed-{uuid.uuid4().hex}"
    breaker, says, file = MODEL_CASES[case]
    breaker(model, marker)
    out = out_dir / "s.tif"
    fails_cleanly(["score", model, demo.test[0], "-o", out, "--mask-out", out_dir / "m.tif", "--fpr", "0.01"],
                  out, model / file if file else model, says)
    assert not marker.exists(), "loading the model executed code from it"


# --------------------------------------------------------------------------------------------- configs


CONFIG_CASES = {
    "unknown key": ("train:\n  epohcs: 3\n", "train.epohcs", "unknown key"),
    "unknown section": ("trian:\n  epochs: 3\n", "trian", "unknown key"),
    "wrong type": ("train:\n  lr: fast\n", "train.lr", "not of type"),
    "wrong type of section": ("train: [1, 2]\n", "train", "not of type"),
    "negative size": ("train:\n  batch_size: -64\n", "train.batch_size", "minimum"),
    "negative size elsewhere": ("synth:\n  size: -5\n", "synth.size", "minimum"),
    "not a mapping": ("- a\n- b\n", "config", "mapping"),
    "not YAML": ("train: {epochs: [1\n", "config", "YAML"),
    "binary": (bytes(range(128, 256)) * 3, "config", "not a YAML text file"),
    "python tag with a payload": ("train:\n  epochs: !!python/object/apply:os.mkdir [MARKER]\n", "config", "YAML"),
}


@pytest.mark.parametrize("case", CONFIG_CASES)
def test_bad_config_names_the_key(case, sample_file, tmp_path, out_dir):
    content, key, says = CONFIG_CASES[case]
    config = tmp_path / "config.yaml"
    marker = tmp_path / "executed"
    if isinstance(content, bytes):
        config.write_bytes(content)
    else:
        config.write_text(content.replace("MARKER", str(marker)))
    if "MARKER" in str(content):  # the payload is live: an unsafe YAML loader does run it
        import yaml

        yaml.unsafe_load(content.replace("MARKER", str(tmp_path / "probe")))
        assert (tmp_path / "probe").exists()
    out = out_dir / "model"
    fails_cleanly(["train", sample_file, "-o", out, "--config", config], out, config, key, says, code=2)
    assert not marker.exists()


def test_missing_config_file(sample_file, tmp_path, out_dir):
    out = out_dir / "model"
    fails_cleanly(["train", sample_file, "-o", out, "--config", tmp_path / "nope.yaml"], out,
                  tmp_path / "nope.yaml", "not found", code=2)


@pytest.mark.parametrize("option,value,key", [("--epochs", "-3", "train.epochs"), ("--batch-size", "0", "train.batch_size"),
                                               ("--latent", "0", "train.latent")])
def test_bad_command_line_value_names_the_key(option, value, key, sample_file, out_dir):
    out = out_dir / "model"
    fails_cleanly(["train", sample_file, "-o", out, option, value], out, key, "minimum", code=2)


def test_bad_score_option_names_the_key(model_dir, demo, out_dir):
    out = out_dir / "s.tif"
    fails_cleanly(["score", model_dir, demo.test[0], "-o", out, "--chunk", "-1"], out, "score.chunk", "minimum",
                  code=2)


# --------------------------------------------------------------------------------------------- outputs that fail


def _mount_tmpfs(path: Path, options: str) -> bool:
    """Mount a small tmpfs at ``path`` (root only); False where that is not possible."""
    if os.geteuid() != 0 or not shutil.which("mount"):
        return False
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True)
    return done.returncode == 0


@pytest.fixture()
def readonly_dir(tmp_path: Path):
    """A folder nobody can write in: a read-only tmpfs for root (who ignores permissions), else mode 0555."""
    d = tmp_path / "readonly"
    if _mount_tmpfs(d, "ro,size=64k"):
        yield d
        subprocess.run(["umount", str(d)], check=True)
        return
    if os.geteuid() == 0:
        pytest.skip("running as root and cannot mount a read-only file system")
    d.mkdir()
    d.chmod(0o555)
    yield d
    d.chmod(0o755)


@pytest.fixture()
def full_disk(tmp_path: Path):
    """A 256 kB tmpfs: room for an earlier small result, not for a new raster."""
    d = tmp_path / "full"
    if not _mount_tmpfs(d, "size=256k"):
        pytest.skip("needs root and tmpfs to simulate a full disk")
    yield d
    subprocess.run(["umount", str(d)], check=True)


@pytest.mark.parametrize("command", ["score", "ingest", "train"])
def test_output_folder_not_writable(command, readonly_dir, model_dir, sample_file, demo):
    out = readonly_dir / {"score": "s.tif", "ingest": "s.nc", "train": "model"}[command]
    args = {"score": ["score", model_dir, demo.test[0], "-o", out],
            "ingest": ["ingest", demo.normal[0], "-o", out],
            "train": ["train", sample_file, "-o", out, "--epochs", "1"]}[command]
    before = snapshot(readonly_dir)
    line = assert_one_line_error(rsvae(*args), out, "write")
    assert "read-only" in line.lower() or "not writable" in line.lower() or "permission" in line.lower()
    assert snapshot(readonly_dir) == before


@pytest.mark.parametrize("command", ["score", "ingest", "train"])
def test_output_parent_is_a_file(command, model_dir, sample_file, demo, tmp_path):
    blocker = tmp_path / "results"
    blocker.write_text("a file where a folder should be")
    out = blocker / {"score": "s.tif", "ingest": "s.nc", "train": "model"}[command]
    args = {"score": ["score", model_dir, demo.test[0], "-o", out],
            "ingest": ["ingest", demo.normal[0], "-o", out],
            "train": ["train", sample_file, "-o", out, "--epochs", "1"]}[command]
    assert_one_line_error(rsvae(*args), out, f"{blocker} is a file, not a folder")
    assert blocker.read_text() == "a file where a folder should be"


def test_output_is_the_input(model_dir, demo, tmp_path):
    tile = tmp_path / "tile.tif"
    shutil.copy(demo.test[0], tile)
    before = snapshot(tmp_path)
    assert_one_line_error(rsvae("score", model_dir, tile, "-o", tile), tile, "is also the input")
    assert_one_line_error(rsvae("score", model_dir, tile, "-o", tmp_path / "s.tif", "--mask-out",
                                tmp_path / "s.tif", "--fpr", "0.01"), "s.tif", "is also another output")
    assert snapshot(tmp_path) == before


def test_model_output_folder_holding_other_files_is_not_replaced(sample_file, tmp_path):
    folder = tmp_path / "results"
    folder.mkdir()
    (folder / "scores.tif").write_bytes(b"a user's result")
    before = snapshot(tmp_path)
    assert_one_line_error(rsvae("train", sample_file, "-o", folder, "--epochs", "1"), folder, "refusing")
    assert snapshot(tmp_path) == before


def test_disk_full_while_writing_scores(model_dir, tmp_path, out_dir, monkeypatch):
    """Simulated (works without root): each output's second block fails with ENOSPC."""
    data = np.random.default_rng(0).random((BANDS, 600, 300)).astype(np.float32)  # several windows
    tile = write_tif(tmp_path / "t.tif", data)
    failed = []
    real_write = rasterio.io.DatasetWriter.write

    def write(self, *args, **kwargs):
        self.test_writes = getattr(self, "test_writes", 0) + 1
        if self.test_writes == 2:
            failed.append(self.name)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(self, *args, **kwargs)

    monkeypatch.setattr(rasterio.io.DatasetWriter, "write", write)
    out = out_dir / "s.tif"
    fails_cleanly(["score", model_dir, tile, "-o", out], out, out, "no space left on device")
    assert len(failed) == 2  # once per run


def _run_rsvae(*args: object, cwd: Path) -> subprocess.CompletedProcess:
    """The real ``rsvae`` entry point in a fresh process (stderr here includes what C libraries print)."""
    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")]),
               OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "pipeline", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def test_disk_full_for_real(full_disk, model_dir, sample_file, tmp_path):
    """A real full file system: earlier results stay, nothing new appears, one line says why."""
    big = write_tif(tmp_path / "big.tif", np.random.default_rng(0).random((BANDS, 256, 256)).astype(np.float32))
    outs = {"score": full_disk / "s.tif", "ingest": full_disk / "s.nc", "train": full_disk / "model"}
    for out in outs.values():
        plant_earlier(out)
    before = snapshot(full_disk)
    # score in a fresh process of the real entry point: stderr then includes what C libraries print
    done = _run_rsvae("score", model_dir, big, "-o", outs["score"], cwd=tmp_path)
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    last = done.stderr.strip().splitlines()[-1]  # libtiff may print its own raw complaint first
    assert last.startswith(f"Error: {outs['score']}:") and "disk is full" in last, done.stderr
    assert snapshot(full_disk) == before
    for args in (["ingest", big, "-o", outs["ingest"], "--max-pixels", "60000"],
                 ["train", sample_file, "-o", outs["train"], "--epochs", "1", "--hidden", "2048", "--device", "cpu"]):
        assert_one_line_error(rsvae(*args), outs[args[0]], "no space left on device")
        assert snapshot(full_disk) == before
