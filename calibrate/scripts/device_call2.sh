#!/bin/bash
# Second H100 call: resume the eager sweep (same command as call 1), then the static-cache sweep.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD || exit 1
export PYTHONUNBUFFERED=1
RUN=calibrate/runs/h100-llama-2-7b-hf
chmod -R u+w calibrate/runs
python3 -m dcsim.commands.calibrate --device cuda:0 --model-arch llama-2-7b --backend hf \
  --plan calibrate/plans/h100-hf.yaml --out $RUN --max-minutes ${EAGER_MIN:-4.0} --no-progress 2>&1 | tee $OUT/log.txt
mkdir -p $OUT/eager && cp $RUN/runs.csv $RUN/manifest.json $RUN/power.csv $OUT/eager/
RUN2=calibrate/runs/h100-llama-2-7b-hf-static
mins=$(python3 -c "print(round((560 - $SECONDS) / 60, 2))")
echo "static sweep gets $mins min" | tee -a $OUT/log.txt
python3 -m dcsim.commands.calibrate --device cuda:0 --model-arch llama-2-7b --backend hf-static \
  --plan calibrate/plans/h100-hf-static.yaml --out $RUN2 --max-minutes $mins --no-progress 2>&1 | grep -v -i warn | tee -a $OUT/log.txt
mkdir -p $OUT/static && cp $RUN2/* $OUT/static/
echo "total ${SECONDS}s" | tee -a $OUT/log.txt
