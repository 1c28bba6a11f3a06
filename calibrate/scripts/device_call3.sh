#!/bin/bash
# H200 call: the static-cache sweep with idle windows, then the eager sweep with the time left
# (the same command resumes it in a later call).
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD || exit 1
export PYTHONUNBUFFERED=1
chmod -R u+w calibrate/runs
nvidia-smi --query-gpu=name,driver_version,power.limit,power.min_limit,power.max_limit,power.draw,persistence_mode,clocks.sm,clocks.max.sm,pstate --format=csv 2>&1 | tee $OUT/log.txt
RUN=calibrate/runs/h200-llama-2-7b-hf-static
python3 -m dcsim.commands.calibrate --device cuda:0 --model-arch llama-2-7b --backend hf-static \
  --plan calibrate/plans/h200-hf-static.yaml --out $RUN --max-minutes 6.0 --no-progress 2>&1 | grep -v -i warn | tee -a $OUT/log.txt
mkdir -p $OUT/static && cp $RUN/* $OUT/static/
RUN2=calibrate/runs/h200-llama-2-7b-hf
mins=$(python3 -c "print(round((565 - $SECONDS) / 60, 2))")
echo "eager sweep gets $mins min" | tee -a $OUT/log.txt
python3 -m dcsim.commands.calibrate --device cuda:0 --model-arch llama-2-7b --backend hf \
  --plan calibrate/plans/h100-hf.yaml --out $RUN2 --max-minutes $mins --no-progress 2>&1 | tee -a $OUT/log.txt
mkdir -p $OUT/eager && cp $RUN2/runs.csv $RUN2/manifest.json $RUN2/power.csv $OUT/eager/
echo "total ${SECONDS}s" | tee -a $OUT/log.txt
