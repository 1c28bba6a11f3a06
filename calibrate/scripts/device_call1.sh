#!/bin/bash
# First call on an H100: software check, the eager sweep (time-boxed; the same command resumes),
# then the static-cache probe with what time is left. Raw files land in $OUT.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD || exit 1
export PYTHONUNBUFFERED=1
{
python3 -c "import sys, torch, transformers, zeus, pydantic, scipy, tqdm; print('py', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda, 'transformers', transformers.__version__, 'zeus', zeus.__version__, 'pydantic', pydantic.__version__)"
nvidia-smi --query-gpu=name,driver_version,power.limit,power.default_limit,power.min_limit,power.max_limit,power.draw,persistence_mode,compute_mode,clocks.sm,clocks.mem,clocks.max.sm,pstate,temperature.gpu --format=csv
ls /sys/class/powercap 2>&1 | head -3; cat /sys/class/powercap/intel-rapl:0/energy_uj 2>&1 | head -1
nproc; free -g | head -2
} 2>&1 | tee $OUT/software.txt
RUN=calibrate/runs/h100-llama-2-7b-hf
python3 -m dcsim.commands.calibrate --device cuda:0 --model-arch llama-2-7b --backend hf \
  --plan calibrate/plans/h100-hf.yaml --out $RUN --max-minutes ${EAGER_MIN:-6.3} --no-progress 2>&1 | tee $OUT/eager.log
mkdir -p $OUT/$(basename $RUN) && cp $RUN/* $OUT/$(basename $RUN)/
left=$(( 575 - SECONDS ))
echo "seconds left for the probe: $left"
if [ $left -gt 60 ]; then timeout $left python3 calibrate/scripts/probe_static.py llama-2-7b 2>&1 | grep -v Warning | tee $OUT/probe.log; fi
echo "total ${SECONDS}s"
