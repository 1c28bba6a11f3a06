#!/bin/bash
# The validation cases, one function each: `case_<name> DEVICE_TAG PROFILE [LIMIT]` runs `dcsim validate` for it
# (LIMIT: how many requests, where a faster device needs more for a 3-minute window). PLAN, if set, is the
# calibration plan whose cache lengths the engine takes (default: the plan of the profile's calibration run).
# Each committed case's replay.json records the exact command it ran. The limits here are sized for the hf-graph
# profile (its faster prefill shortened the azure-code window to 108 s at 280 requests); the h100-* hf-static
# cases ran with 280/72/150 requests and, on the first three, no probe.
# Sized with `dcsim validate --dry-run` so each window lasts at least 3 minutes at about 60% utilisation
# of one replica (static batching: offered at the isolated service rate, so batches form).
V="python3 -m dcsim.commands.validate --device cuda:0 --model-arch ${ARCH:-llama-2-7b} --random-weights --settle-s 5"
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

# The paged engine (vLLM v1-style: chunked prefill under a 2048-token budget, 64 sequences, KV in 16-token blocks,
# decode graphs captured), forecast with the paged policy. --utilisation is a fraction of the request rate the
# engine sustains on these requests (simulated); limits sized with --dry-run for windows of at least 3 minutes.
# --step-probe default: four serving steps timed before and after the window on the same engine (step_probe.csv;
# read against the served-loop sweep with validation/scripts/step_costs.py --calibration RUN)
PAGED="--backend paged --batching paged --max-num-seqs 64 --max-num-batched-tokens 2048 --step-probe default"
_paged_conv() {  # Azure conversation trace at utilisation $3, $4 requests (its own gaps stretched)
  $V --profile "$2" $PAGED --trace traces/azure-conv-2023.parquet --arrivals replay --utilisation $3 --limit $4 \
     --clip-in 2048 --clip-out 512 ${@:5} --out validation/$1
}
case_paged_conv30() { _paged_conv $1-paged-conv30 $2 0.3 ${3:-500}; }
case_paged_conv60() { _paged_conv $1-paged-conv60 $2 0.6 ${3:-1000}; }
case_paged_conv90() { _paged_conv $1-paged-conv90 $2 0.9 ${3:-1450}; }
case_paged_smallkv() {  # KV pool of 600 blocks (9,600 tokens) on purpose, so that decodes preempt
  _paged_conv $1-paged-smallkv $2 0.9 ${3:-420} --skip 2000 --kv-blocks 600
}
case_paged_code() {  # Azure code trace (prefill-heavy: chunking matters)
  $V --profile "$2" $PAGED --trace traces/azure-code-2023.parquet --arrivals replay --utilisation 0.6 \
     --limit ${3:-2100} --clip-in 2048 --clip-out 512 --out validation/$1-paged-code
}
case_paged_gsm8k() {  # GSM8K test prompts, Poisson arrivals
  $V --profile "$2" $PAGED --trace traces/gsm8k-test.parquet --arrivals poisson --utilisation 0.28 \
     --limit ${3:-1319} --seed 1 --step-probe 16:512:0,4:512:64,32:512:64,0:0:256 --out validation/$1-paged-gsm8k
}
case_paged_gsm8k_8shot() {  # GSM8K with one 8-shot preamble shared by every prompt: prefix caching
  $V --profile "$2" $PAGED --trace traces/gsm8k-test-8shot.parquet --arrivals poisson --utilisation 0.6 \
     --limit ${3:-1319} --seed 3 --out validation/$1-paged-gsm8k-8shot
}
