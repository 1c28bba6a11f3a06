#!/bin/bash
# Sourced at the start of every device call script: installs the carried wheels (.whl/) into /tmp/site, puts them
# and the checkout on PYTHONPATH, and writes the GPU's state (read-only nvidia-smi query) to $OUT/log.txt.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  && export PYTHONPATH=/tmp/site:$PWD || exit 1
export PYTHONUNBUFFERED=1
chmod -R u+w calibrate/runs 2>/dev/null
nvidia-smi --query-gpu=name,driver_version,power.limit,power.draw,persistence_mode,clocks.sm,pstate,temperature.gpu \
  --format=csv 2>&1 | tee $OUT/log.txt
