#!/bin/bash
# The validation cases, one function each: `case_<name> DEVICE_TAG PROFILE [LIMIT]` runs `dcsim validate` for it
# (LIMIT: how many requests, where a faster device needs more for a 3-minute window). PLAN, if set, is the
# calibration plan whose cache lengths the engine takes (default: the plan of the profile's calibration run).
# Each committed case's replay.json records the exact command it ran. The limits here are sized for the hf-graph
# profile (its faster prefill shortened the azure-code window to 108 s at 280 requests); the h100-* hf-static
# cases ran with 280/72/150 requests and, on the first three, no probe.
# Sized with `dcsim validate --dry-run` so each window lasts at least 3 minutes at about 60% utilisation
# of one replica (static batching: offered at the isolated service rate, so batches form).
V="python3 -m dcsim.commands.validate --device cuda:0 --model-arch llama-2-7b --random-weights --settle-s 5"
[ -n "${PLAN:-}" ] && V="$V --plan $PLAN"
V="$V ${VALIDATE_FLAGS:-}"  # e.g. VALIDATE_FLAGS=--dry-run rehearses a device call on any machine
# calibration shapes run after each window on the same engine: tells a slower machine from a wrong model
PROBE="--probe 32:64,32:128,32:256,32:512 --probe-repeats 2"

case_gsm8k_poisson() {  # GSM8K test prompts, Poisson arrivals, one request at a time
  $V --profile "$2" --trace traces/gsm8k-test.parquet --arrivals poisson --utilisation 0.6 --limit ${3:-92} --seed 1 \
     --batching fcfs $PROBE --out validation/$1-gsm8k-poisson
}
case_azure_code() {  # Azure code trace (prefill-heavy), its own timestamps stretched to 60% utilisation
  $V --profile "$2" --trace traces/azure-code-2023.parquet --arrivals replay --utilisation 0.6 --limit ${3:-420} \
     --clip-in 1792 --clip-out 288 --batching fcfs $PROBE --out validation/$1-azure-code
}
case_azure_conv() {  # Azure conversation trace (decode-heavy), likewise
  $V --profile "$2" --trace traces/azure-conv-2023.parquet --arrivals replay --utilisation 0.6 --limit ${3:-80} \
     --clip-in 1536 --clip-out 512 --batching fcfs $PROBE --out validation/$1-azure-conv
}
case_gsm8k_static() {  # GSM8K under static batching (up to 4, wait at most 1 s); caches as calibrated (320 at b>1)
  $V --profile "$2" --trace traces/gsm8k-test.parquet --arrivals poisson --utilisation 1.0 --limit ${3:-165} --skip 200 \
     --seed 2 --batching static --max-batch 4 --max-wait-s 1 --clip-in 128 --clip-out 192 \
     --probe 32:64,32:128,32:256,32:512,256:64:4 --out validation/$1-gsm8k-static
}
