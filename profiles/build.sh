#!/usr/bin/env bash
# Rebuild every shipped profile (YAML + PNG) from the published data sets and our calibration runs.
# Usage: profiles/build.sh DATA   (DATA = the folder holding wilkins2024-energy-inference/, mlenergy-leaderboard-v2/, -v3/)
#        profiles/build.sh --calibrated   (only the profiles fitted to our own runs in calibrate/runs/, and the
#                                          profiles derived from them; no DATA)
#        profiles/build.sh --derived      (only the datasheet transfers in profiles/derived/)
set -euo pipefail
cd "$(dirname "$0")/.."
fit() { python -m dcsim.cli fit "$@"; }
calibrated() {
  # dcsim calibrate on the project's H100/H200, random weights in the real architecture (calibrate/README.md)
  fit calibrate/runs/h100-llama-2-7b-hf -o profiles/h100-sxm-80gb--llama-2-7b--hf-bf16.yaml
  fit calibrate/runs/h100-llama-2-7b-hf-static --kv-cache live -o profiles/h100-sxm-80gb--llama-2-7b--hf-static-bf16.yaml
  fit calibrate/runs/h100-llama-2-7b-hf-graph --kv-cache live -o profiles/h100-sxm-80gb--llama-2-7b--hf-graph-bf16.yaml
  fit calibrate/runs/h100-llama-2-7b-hf-graph-standard -o profiles/h100-sxm-80gb--llama-2-7b--hf-graph-standard-bf16.yaml
  fit calibrate/runs/h200-llama-2-7b-hf -o profiles/h200--llama-2-7b--hf-bf16.yaml
  fit calibrate/runs/h200-llama-2-7b-hf-static -o profiles/h200--llama-2-7b--hf-static-bf16.yaml
  fit calibrate/runs/h200-llama-2-13b-hf-static -o profiles/h200--llama-2-13b--hf-static-bf16.yaml
  # no idle windows in its plan: the idle draw of the 7B standard run on the same device model
  fit calibrate/runs/h200-llama-3.2-1b-hf-graph-small-model-graph \
    --idle-from calibrate/runs/h200-llama-2-7b-hf-graph-standard-b -o profiles/h200--llama-3.2-1b--hf-graph-bf16.yaml
  fit calibrate/runs/h200-llama-2-7b-hf-graph-standard -o profiles/h200--llama-2-7b--hf-graph-bf16.yaml
  fit calibrate/runs/h200-llama-2-7b-hf-graph-standard-b -o profiles/h200--llama-2-7b--hf-graph-standard-bf16.yaml
  # the paged engine's mixed-step sweep (rows of phase step): dcsim/profiles/fit_steps.py
  fit calibrate/runs/h200b-llama-2-7b-paged-paged-mixed-steps -o profiles/h200--llama-2-7b--paged-bf16.yaml
}
derived() {
  # datasheet transfer of the H100 profiles to the H200, checked against the H200's own runs (profiles/README.md)
  for e in hf-static hf; do
    fit --derive --from "profiles/h100-sxm-80gb--llama-2-7b--$e-bf16.yaml" --to h200 \
      --check "calibrate/runs/h200-llama-2-7b-$e" --compare "profiles/h200--llama-2-7b--$e-bf16.yaml" \
      -o "profiles/derived/h200--llama-2-7b--$e-bf16--from-h100-sxm-80gb.yaml"
  done
  # hf-graph: the H200 validation replays were sized with this one (validation/h200g-*/replay.json)
  fit --derive --from profiles/h100-sxm-80gb--llama-2-7b--hf-graph-bf16.yaml --to h200 \
    --check calibrate/runs/h200-llama-2-7b-hf-graph-standard --compare profiles/h200--llama-2-7b--hf-graph-bf16.yaml \
    -o profiles/derived/h200--llama-2-7b--hf-graph-bf16--from-h100-sxm-80gb.yaml
  # hf-graph's step is paced by the GPU's kernel sequence, not by bandwidth alone: keep the part above the
  # weights' read time (the H100 and H200 share the GH100 die and its clocks)
  fit --derive --from profiles/h100-sxm-80gb--llama-2-7b--hf-graph-bf16.yaml --to h200 --step-overhead-ms roofline \
    --check calibrate/runs/h200-llama-2-7b-hf-graph-standard --compare profiles/h200--llama-2-7b--hf-graph-bf16.yaml \
    -o profiles/derived/h200--llama-2-7b--hf-graph-bf16--from-h100-sxm-80gb--roofline.yaml
  # the same plan measured on both devices (standard-grouped, the same caches, both complete): the like-for-like
  # transfer
  fit --derive --from profiles/h100-sxm-80gb--llama-2-7b--hf-graph-standard-bf16.yaml --to h200 \
    --step-overhead-ms roofline --check calibrate/runs/h200-llama-2-7b-hf-graph-standard-b \
    --compare profiles/h200--llama-2-7b--hf-graph-standard-bf16.yaml \
    -o profiles/derived/h200--llama-2-7b--hf-graph-standard-bf16--from-h100-sxm-80gb--roofline.yaml
}
if [ "${1:-}" = "--calibrated" ]; then calibrated; derived; exit 0; fi
if [ "${1:-}" = "--derived" ]; then derived; exit 0; fi
DATA=${1:?usage: profiles/build.sh DATA | --calibrated}
W="$DATA/wilkins2024-energy-inference"
# Wilkins, Keshav, Mortier 2024 (HF pipeline, batch 1)
fit --from wilkins2024 "$W" --system M1-Pro --model "Llama-2 (7B)" -o profiles/m1-pro--llama-2-7b--hf-fp16.yaml
fit --from wilkins2024 "$W" --system M1-Pro --model "Mistral (7B)" -o profiles/m1-pro--mistral-7b--hf-fp16.yaml
for m in "Llama-2 (7B):llama-2-7b" "Mistral (7B):mistral-7b" "Falcon (7B):falcon-7b"; do
  name=${m%%:*}; slug=${m##*:}
  fit --from wilkins2024 "$W" --system "Swing AMD+A100" --model "$name" -o "profiles/a100-sxm4-40gb--$slug--hf-bf16.yaml"
  fit --from wilkins2024 "$W" --system "Palmetto Intel+A100" --model "$name" -o "profiles/a100-pcie-40gb--$slug--hf-bf16.yaml"
  fit --from wilkins2024 "$W" --system "Palmetto Intel+V100" --model "$name" -o "profiles/v100-16gb--$slug--hf-bf16.yaml"
done
# ML.ENERGY leaderboard (vLLM, continuous batching)
V2="$DATA/mlenergy-leaderboard-v2"; V3="$DATA/mlenergy-leaderboard-v3"
fit --from mlenergy "$V2" --gpu A100 --model Llama-3.1-8B-Instruct -o profiles/a100-sxm4-40gb--llama-3.1-8b--vllm-mlenergy-v2-bf16.yaml
fit --from mlenergy "$V2" --gpu H100 --model Llama-3.1-8B-Instruct -o profiles/h100-sxm-80gb--llama-3.1-8b--vllm-mlenergy-v2-bf16.yaml
fit --from mlenergy "$V3" --gpu H100 --model Llama-3.1-8B-Instruct -o profiles/h100-sxm-80gb--llama-3.1-8b--vllm-mlenergy-v3-bf16.yaml
fit --from mlenergy "$V3" --gpu B200 --model Llama-3.1-8B-Instruct -o profiles/b200--llama-3.1-8b--vllm-mlenergy-v3-bf16.yaml
fit --from mlenergy "$V2" --gpu A100 --model Llama-3.1-70B-Instruct -o profiles/a100-sxm4-40gb-x8--llama-3.1-70b--vllm-mlenergy-v2-bf16.yaml
fit --from mlenergy "$V2" --gpu H100 --model Llama-3.1-70B-Instruct -o profiles/h100-sxm-80gb-x4--llama-3.1-70b--vllm-mlenergy-v2-bf16.yaml
fit --from mlenergy "$V3" --gpu H100 --model Llama-3.1-70B-Instruct -o profiles/h100-sxm-80gb-x4--llama-3.1-70b--vllm-mlenergy-v3-bf16.yaml
fit --from mlenergy "$V3" --gpu B200 --model Llama-3.1-70B-Instruct -o profiles/b200-x2--llama-3.1-70b--vllm-mlenergy-v3-bf16.yaml
# our own calibration runs (in the repository), then the profiles derived from them
calibrated
derived
