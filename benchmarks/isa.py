"""Run the benchmarks' measured processes as on a CPU without AVX-512: the environment that holds every library's
kernels to AVX2, and a check that it took effect.

Most machines users run (AMD EPYC/Ryzen before Zen 4, older Intel) have AVX2 and no AVX-512 or AMX. On any x86 CPU
with AVX-512 the same processes can be held to AVX2 kernels: PyTorch's own kernels (``ATEN_CPU_CAPABILITY``),
oneDNN (``ONEDNN_MAX_CPU_ISA``), and also MKL (``MKL_ENABLE_INSTRUCTIONS``), which runs torch's float32 matrix products
(``ATEN_CPU_CAPABILITY`` alone leaves them on AVX-512), numpy (``NPY_DISABLE_CPU_FEATURES``) and numpy's OpenBLAS
(``OPENBLAS_CORETYPE``). Not covered: libdeflate (tile decompression; its inflate loop is scalar BMI2 code, only its
checksums use AVX-512), GDAL and the C libraries, which pick their kernels themselves.

    python benchmarks/isa.py            # what each ISA setting gives in a child process
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

ISAS = ("native", "avx2")


def isa_env(isa: str) -> dict[str, str]:
    """The environment variables that hold a process to ``isa`` (``native``: none)."""
    if isa == "native":
        return {}
    if isa != "avx2":
        raise ValueError(f"unknown ISA {isa!r} (one of {', '.join(ISAS)})")
    try:  # numpy's AVX-512 dispatch targets by the names this numpy uses (they changed in numpy 2.3)
        from numpy._core._multiarray_umath import __cpu_dispatch__ as targets
    except ImportError:
        from numpy.core._multiarray_umath import __cpu_dispatch__ as targets
    avx512 = [t for t in targets if "AVX512" in t or t == "X86_V4"]
    env = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2",
           "OPENBLAS_CORETYPE": "Haswell"}
    if avx512:
        env["NPY_DISABLE_CPU_FEATURES"] = ",".join(avx512)
    return env


def with_isa(isa: str, base: dict[str, str] | None = None) -> dict[str, str]:
    """``base`` (default: this process's environment) plus ``isa_env(isa)``."""
    return dict(os.environ if base is None else base, **isa_env(isa))


PROBE = r"""
import json, os, torch, numpy
try:
    from numpy._core._multiarray_umath import __cpu_features__ as f
except ImportError:
    from numpy.core._multiarray_umath import __cpu_features__ as f
torch.mm(torch.ones(64, 64), torch.ones(64, 64))
avx512 = [k for k in ("X86_V4", "AVX512_SKX", "AVX512_ICL", "AVX512_SPR") if f.get(k)]  # enabled dispatch targets
print(json.dumps({"torch": torch.backends.cpu.get_cpu_capability(), "numpy_avx512": bool(avx512)}))
"""


def probe(isa: str) -> dict[str, str | bool]:
    """What a child process under ``isa`` really runs: torch's kernel level, MKL's code path (from MKL_VERBOSE's
    first line) and whether numpy dispatches to AVX-512."""
    env = dict(with_isa(isa), MKL_VERBOSE="1")
    done = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, check=True)
    lines = done.stdout.strip().splitlines()
    got = json.loads(lines[-1])
    banner = next((ln for ln in lines if ln.startswith("MKL_VERBOSE") and "Intel(R)" in ln), "")
    got["mkl"] = ("AVX-512" if "AVX-512" in banner else "AVX2" if "AVX2" in banner else
                  "unknown" if not banner else banner.split(" for ", 1)[-1][:60])
    return got


def check(isa: str) -> str:
    """A one-line description of ``isa``'s processes; raises when ``avx2`` did not take effect."""
    got = probe(isa)
    line = f"{isa}: torch kernels {got['torch']}, MKL {got['mkl']}, numpy AVX-512 {'on' if got['numpy_avx512'] else 'off'}"
    if isa == "avx2" and (got["torch"] != "AVX2" or got["mkl"] == "AVX-512" or got["numpy_avx512"]):
        raise RuntimeError(f"the AVX2 environment did not take effect: {line}")
    return line


def without_isa(argv: list[str]) -> list[str]:
    """``argv`` without its ``--isa`` option."""
    out, skip = [], False
    for v in argv:
        if skip:
            skip = False
        elif v == "--isa":
            skip = True
        elif not v.startswith("--isa="):
            out.append(v)
    return out


def isa_list(parser: argparse.ArgumentParser, text: str) -> list[str]:
    """The ISAs of a comma-separated ``--isa`` value, or the parser's usage error naming the unknown ones."""
    isas = [i.strip() for i in text.split(",") if i.strip()]
    unknown = sorted(set(isas) - set(ISAS))
    if unknown or not isas:
        parser.error(f"--isa: unknown {', '.join(unknown) or 'empty'} (choose from {', '.join(ISAS)})")
    return isas


ISA_HELP = ("instruction sets to run under, comma-separated, each in a new process: native and/or avx2 (torch, MKL, "
            "oneDNN, numpy held to AVX2: benchmarks/isa.py); default native")


def parse_per_isa(parser: argparse.ArgumentParser, script: str,
                  argv: list[str] | None) -> tuple[argparse.Namespace, int | None]:
    """Add the benchmarks' ``--isa`` option to ``parser``, parse ``argv`` (None: this process's arguments), and
    ``rerun_per_isa`` for its value: (the arguments, None) when this process is the run to make, else the reruns'
    exit status."""
    parser.add_argument("--isa", default="native", help=ISA_HELP)
    a = parser.parse_args(argv)
    return a, rerun_per_isa(script, list(argv if argv is not None else sys.argv[1:]), isa_list(parser, a.isa))


def rerun_per_isa(script: str, argv: list[str], isas: list[str]) -> int | None:
    """Run ``script`` again in a new process per ISA of ``isas``, in its environment, with ``argv`` and that one
    ISA, each after a heading line; None when this process is already the run to make (only native asked for, or
    a child started here)."""
    if isas == ["native"] or "RSVAE_BENCH_ISA" in os.environ:
        return None
    rc = 0
    for isa in isas:
        print(f"\n### ISA {check(isa)}", flush=True)
        env = dict(with_isa(isa), RSVAE_BENCH_ISA=isa)
        rc |= subprocess.run([sys.executable, script, *without_isa(argv), "--isa", isa], env=env).returncode
    return rc


if __name__ == "__main__":
    for name in ISAS:
        print(check(name))
