"""The throughput benchmark runs end to end at a tiny size (a smoke test: no timing is asserted)."""

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow  # end to end, > 15 s: run by .ci/run, not by the README's test command
def test_throughput_benchmark_smoke(tmp_path, capsys, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import throughput

    assert throughput.main(["--size", "256", "--bands", "8", "--cache", str(tmp_path), "--train-pixels", "3000",
                            "--api-pixels", "4000", "--train-threads", "1", "--repeat", "1"]) == 0
    out = capsys.readouterr().out
    for needle in ("read every block", "I/O-only", "`rsvae score`", "Python API", "training the default model",
                   "1a.", "1b.", "2. peak RSS", "3. API scoring", "4. training"):
        assert needle in out, needle
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scene_256x256x8.tif"]  # the cached raster, reused
    del sys.modules["throughput"]


@pytest.mark.slow  # end to end, > 15 s: run by .ci/run, not by the README's test command
def test_throughput_sentinel2_case_smoke(tmp_path, capsys, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import throughput

    assert throughput.main(["--sentinel2", "--size", "240", "--cache", str(tmp_path), "--repeat", "1"]) == 0
    out = capsys.readouterr().out
    for needle in ("`rsvae stack` -> VRT", "stacked GeoTIFF", "`rsvae score` on the stacked VRT",
                   "VRT ≥ 0.7 ×", "peak RSS of `rsvae score`"):
        assert needle in out, needle
    del sys.modules["throughput"]
def test_detect_memory_benchmark_smoke(tmp_path, capsys, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import detect_memory

    assert detect_memory.main(["--sizes", "300", "--blobs", "4", "--workdir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "peak RSS MiB" in out and out.count("wrote ") == 2
    del sys.modules["detect_memory"]


def test_isa_avx2_environment_takes_effect(monkeypatch):
    """--isa avx2 holds torch's kernels, MKL's products and numpy's dispatch to AVX2 in a child process."""
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import isa

    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    if " avx2" not in flags:
        import pytest

        pytest.skip("not an x86 CPU with AVX2")
    assert isa.isa_env("native") == {}
    assert isa.isa_env("avx2")["MKL_ENABLE_INSTRUCTIONS"] == "AVX2"
    line = isa.check("avx2")  # raises when it did not take effect
    assert "torch kernels AVX2" in line and "numpy AVX-512 off" in line
    assert isa.without_isa(["--bands", "64", "--isa", "avx2", "--isa=native", "-x"]) == ["--bands", "64", "-x"]
    del sys.modules["isa"]
