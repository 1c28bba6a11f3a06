#!/bin/bash
# One device call: calibrate the hf-graph engine with each PLAN in turn, one run folder per plan
# (calibrate/runs/TAG-ARCH-hf-graph-<plan name>; ARCH from the environment, default llama-2-7b), each time-boxed
# to MINUTES (default 3.2) so the call ends inside its 600 s; the same command resumes a paused folder once its .tgz is unpacked here. Raw files land in $OUT.
# Usage: bash calibrate/scripts/plans_call.sh TAG PLAN [PLAN ...]
#   e.g. bash calibrate/scripts/plans_call.sh h100 calibrate/plans/busy-power-hot-4096.yaml \
#          calibrate/plans/busy-power-cool-4096.yaml
#        ARCH=llama-3.2-1b bash calibrate/scripts/plans_call.sh h200 calibrate/plans/small-model-graph.yaml
tag=${1:?usage: plans_call.sh TAG PLAN [PLAN ...]}; shift
source calibrate/scripts/device_setup.sh
for plan in "$@"; do
  name=$(basename "$plan" .yaml)
  R=calibrate/runs/$tag-${ARCH:-llama-2-7b}-hf-graph-$name
  echo "== $plan -> $R at ${SECONDS}s" | tee -a $OUT/log.txt
  python3 -m dcsim.commands.calibrate --device cuda:0 --model-arch ${ARCH:-llama-2-7b} --no-progress --backend hf-graph \
    --plan "$plan" --out $R --max-minutes ${MINUTES:-3.2} 2>&1 | grep -v -i warn | tee -a $OUT/log.txt
  tar czf $OUT/$tag-$name.tgz $R
done
echo "total ${SECONDS}s" | tee -a $OUT/log.txt
