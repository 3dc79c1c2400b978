#!/usr/bin/env bash
# Create .venv and install rsvae with its test and workflow tools. Safe to run again.
# torch==2.13.0 (CPU build) goes in first: an unpinned torch would pull a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet "torch==2.13.0"
.venv/bin/python -m pip install --quiet -e ".[dev]"
echo "rsvae installed in .venv ($(.venv/bin/rsvae --version))"
