#!/bin/bash
# H100 call (prepared, not yet run): check the hf-graph engine on the GPU (its CUDA-graph test), then calibrate
# it with the h100-hf-static shapes, then the duty-cycled hf-static plan, each time-boxed (the same command
# resumes). Raw files land in $OUT.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  && export PYTHONPATH=/tmp/site:$PWD || exit 1
export PYTHONUNBUFFERED=1
chmod -R u+w calibrate/runs 2>/dev/null
python3 -m pytest -q -p no:cacheprovider tests/test_graph_backend.py 2>&1 | tail -5 | tee $OUT/log.txt
C="python3 -m dcsim.commands.calibrate --device cuda:0 --model-arch llama-2-7b --no-progress"
R=calibrate/runs/h100-llama-2-7b-hf-graph
$C --backend hf-graph --plan calibrate/plans/h100-hf-static.yaml --out $R --max-minutes 4 2>&1 | grep -v -i warn \
  | tee -a $OUT/log.txt
tar czf $OUT/hf-graph.tgz $R
mins=$(python3 -c "print(round(min(4.0, (560 - $SECONDS) / 60), 2))")
R2=calibrate/runs/h100-llama-2-7b-hf-static-duty
$C --backend hf-static --plan calibrate/plans/h100-hf-static-duty.yaml --out $R2 --max-minutes $mins 2>&1 \
  | grep -v -i warn | tee -a $OUT/log.txt
tar czf $OUT/hf-static-duty.tgz $R2
echo "total ${SECONDS}s" | tee -a $OUT/log.txt
