#!/bin/bash
# H200 call: resume the Llama-2-13B static-cache sweep (same command as call 4) on a fresh machine.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD || exit 1
export PYTHONUNBUFFERED=1
chmod -R u+w calibrate/runs
R=calibrate/runs/h200-llama-2-13b-hf-static
python3 -m dcsim.commands.calibrate --device cuda:0 --model-arch llama-2-13b --backend hf-static \
  --plan calibrate/plans/h200-hf-static.yaml --out $R --max-minutes 6 --no-progress 2>&1 | grep -v -i warn | tee $OUT/log.txt
mkdir -p $OUT/r && cp $R/runs.csv $R/manifest.json $R/power.csv $OUT/r/
echo "total ${SECONDS}s" | tee -a $OUT/log.txt
