#!/usr/bin/env bash
# Re-run every study sweep from scratch (one worker: the machine is shared) and redraw the figures.
# Run from the repository root: bash studies/run_all.sh   (about 4 minutes on one core)
set -euo pipefail
SWEEPS="hybrid-input-threshold hybrid-output-threshold hybrid-baseline
hybrid-poisson-threshold-gsm8k hybrid-poisson-threshold-alpaca
hybrid-poisson-energy-cost-gsm8k hybrid-poisson-energy-cost-alpaca hybrid-poisson-fleet
powercap-a100 powercap-h100 batch-size sharding fleet-mix"
for s in $SWEEPS; do
  rm -rf "results/studies/$s"
  dcsim sweep "scenarios/studies/$s.yaml" --out "results/studies/$s" --workers 1 --no-progress > /dev/null
  echo "$s done"
done
python studies/study_plots.py --results results/studies --out studies
