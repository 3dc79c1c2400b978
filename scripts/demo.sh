#!/usr/bin/env bash
# Set up (if needed) and run the demo end to end with the Snakemake workflow: synthetic tiles -> per-tile ingest
# -> merge -> model -> score rasters, masks, quicklooks, metrics -> summary, then the HTML report.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH"   # the workflow's jobs call `rsvae`
time snakemake -c"${CORES:-2}"
snakemake --report results/report.html
echo "outputs: results/ (scores/, masks/, quicklooks/, metrics/, plots/, summary.csv, training_curve.png)," \
     "report: results/report.html"
