#!/bin/bash
# H200 call: finish the eager sweep (same command), then Llama-3.2-1B and Llama-2-13B shapes with the
# static-cache backend, each time-boxed (resumable).
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD || exit 1
export PYTHONUNBUFFERED=1
chmod -R u+w calibrate/runs
RUN=calibrate/runs/h200-llama-2-7b-hf
python3 -m dcsim.commands.calibrate --device cuda:0 --model-arch llama-2-7b --backend hf \
  --plan calibrate/plans/h100-hf.yaml --out $RUN --max-minutes 2.5 --no-progress 2>&1 | tee $OUT/log.txt
mkdir -p $OUT/eager && cp $RUN/runs.csv $RUN/manifest.json $OUT/eager/ && cp $RUN/power.csv $OUT/eager/
for arch in llama-3.2-1b llama-2-13b; do
  mins=$(python3 -c "print(round(min(3.6, (560 - $SECONDS) / 60), 2))")
  R=calibrate/runs/h200-$arch-hf-static
  echo "$arch static gets $mins min" | tee -a $OUT/log.txt
  python3 -m dcsim.commands.calibrate --device cuda:0 --model-arch $arch --backend hf-static \
    --plan calibrate/plans/h200-hf-static.yaml --out $R --max-minutes $mins --no-progress 2>&1 | grep -v -i warn | tee -a $OUT/log.txt
  mkdir -p $OUT/$arch && tar czf $OUT/$arch/run.tgz -C calibrate/runs h200-$arch-hf-static
done
echo "total ${SECONDS}s" | tee -a $OUT/log.txt
