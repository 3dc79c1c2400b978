#!/usr/bin/env bash
# Set up (if needed) and run the demo end to end: synthetic tiles -> sample -> model -> score rasters and masks.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
R=.venv/bin/rsvae
time {
  $R synth demo/ --seed 0
  $R ingest demo/normal/*.tif -o work/sample.nc --seed 0
  $R train work/sample.nc -o work/model --seed 0
  for tile in demo/test/*.tif; do
    name=$(basename "$tile")
    $R score work/model "$tile" -o "work/scores/$name" --mask-out "work/masks/$name" --fpr 0.001
    $R evaluate "work/scores/$name" "demo/truth/$name" -o "work/metrics/${name%.tif}.json" --plots work/plots
  done
}
echo "outputs: work/scores/ (score rasters), work/masks/ (anomaly masks), work/metrics/, work/plots/"
