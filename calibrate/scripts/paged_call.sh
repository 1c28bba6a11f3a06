#!/bin/bash
# One device call for the `paged` engine: its CUDA tests, the smoke timings (calibrate/scripts/paged_smoke.py), with
# KV_PROBE=1 the KV-contents probe, then
# the mixed-step plan time-boxed to MINUTES (the same command resumes a paused folder once its .tgz is unpacked here).
# Raw files land in $OUT (and, with FIT=NAME.yaml, the fitted profile). Usage: bash calibrate/scripts/paged_call.sh TAG ARCH MINUTES [PLAN]
#   e.g. bash calibrate/scripts/paged_call.sh h200 llama-2-7b 5
tag=${1:?usage: paged_call.sh TAG ARCH MINUTES [PLAN]}; arch=${2:?ARCH}; minutes=${3:?MINUTES}
plan=${4:-calibrate/plans/paged-mixed-steps.yaml}
source calibrate/scripts/device_setup.sh
if [ -z "${QUICK:-}" ]; then  # QUICK=1: the plan alone (the engine's CUDA tests already ran)
  python3 -m pytest -q -p no:cacheprovider tests/test_paged_backend.py -k "cuda or triton or filled" 2>&1 | tail -3 | tee -a $OUT/log.txt
  # SMOKE=0: without the smoke timings
  [ "${SMOKE:-1}" = 1 ] && python3 calibrate/scripts/paged_smoke.py "$arch" 2>&1 | grep -v -i warn | tee $OUT/smoke-$arch.txt
fi
# KV_PROBE=1: served steps over a KV cache of zeros against one of a model's K/V, metered (kv_data_probe.py)
[ -n "${KV_PROBE:-}" ] && python3 calibrate/scripts/kv_data_probe.py "$arch" --csv $OUT/kv_data_probe-$arch.csv 2>&1 \
  | grep -v -i warn | tee -a $OUT/log.txt
R=calibrate/runs/$tag-$arch-paged-$(basename "$plan" .yaml)
echo "== $plan -> $R at ${SECONDS}s" | tee -a $OUT/log.txt
python3 -m dcsim.cli calibrate --device cuda:0 --model-arch "$arch" --random-weights --no-progress --backend paged \
  --plan "$plan" --out "$R" --max-minutes "$minutes" 2>&1 | grep -v -i warn | tee -a $OUT/log.txt
tar czf "$OUT/$tag-$arch-paged.tgz" "$R"
[ -n "${FIT:-}" ] && python3 -m dcsim.cli fit "$R" -o "$OUT/$FIT" 2>&1 | tail -5 | tee -a $OUT/log.txt  # FIT=NAME.yaml
echo "total ${SECONDS}s" | tee -a $OUT/log.txt
