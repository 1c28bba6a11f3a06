#!/bin/bash
# One device call: a continuous-batching server, `transformers serve --continuous-batching`, serving Llama-2-7B
# shapes with random weights (python -m dcsim.calibrate.random_model), measured from outside with the GPU's
# energy counter: calibrated with calibrate/plans/server-continuous.yaml, and/or replayed open loop.
# Usage: bash validation/scripts/server_call.sh TAG STEP...
#   STEP: calibrate                      the plan, time-boxed by MINUTES (default 6); the same step resumes
#         conv:LIMIT | code:LIMIT        `dcsim validate --endpoint --batching continuous` on the Azure
#                                        conversation / code trace, sized by PROFILE (any profile of the device;
#                                        compare afterwards with the server's own: validate --compare-only)
# Raw files land in $OUT as .tgz. Rehearse on a CPU: ARCH=tiny-llama DEVICE=cpu SKIP_INSTALL=1 (latency only).
# Wheels it installs (Python 3.12): .whl/*.whl (see device_call.sh) and .whl/serving/*.whl, the serving extras of
# transformers: pip download --only-binary=:all: --python-version 3.12 ... fastapi uvicorn openai rich, less the
# pydantic wheels already in .whl, and --no-deps accelerate psutil.
tag=${1:?usage: server_call.sh TAG STEP...}; shift
if [ -z "${SKIP_INSTALL:-}" ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    .whl/*.whl .whl/serving/*.whl && export PYTHONPATH=/tmp/site:$PWD || exit 1
  export PATH=/tmp/site/bin:$PATH
fi
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_HUB_CACHE=/tmp/hub
OUT=${OUT:-/tmp/server-out}; mkdir -p $OUT /tmp/hub
ARCH=${ARCH:-llama-2-7b}; DEVICE=${DEVICE:-cuda:0}; PORT=${PORT:-8000}
M=/tmp/model-$ARCH
METER="--meter-device $DEVICE"; [ "$DEVICE" = cpu ] && METER="--latency-only"
log() { echo "$@" | tee -a $OUT/log.txt; }
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,power.limit,power.draw,clocks.sm \
  --format=csv 2>&1 | tee -a $OUT/log.txt
[ -d $M ] || python3 -m dcsim.calibrate.random_model $ARCH $M --device $DEVICE 2>&1 | tee -a $OUT/log.txt
log "model folder ready at ${SECONDS}s"
python3 -c "from transformers.cli.transformers import main; main()" serve --continuous-batching --port $PORT \
  > $OUT/serve.log 2>&1 &
server=$!
trap 'kill $server 2>/dev/null' EXIT
URL=http://127.0.0.1:$PORT/v1
for i in $(seq 1 120); do curl -sf $URL/models >/dev/null && break; sleep 1; done
curl -sf $URL/models >/dev/null || { log "server did not come up"; tail -20 $OUT/serve.log; exit 1; }
log "server up at ${SECONDS}s"
EP="--endpoint $URL --model $M --endpoint-dialect openai $METER"
for step in "$@"; do
  case $step in
    calibrate)
      R=calibrate/runs/$tag-$ARCH-tserve-cb
      python3 -m dcsim.commands.calibrate $EP --plan calibrate/plans/server-continuous.yaml --out $R --no-progress \
        --max-minutes ${MINUTES:-6} 2>&1 | grep -v -i warn | tee -a $OUT/log.txt
      tar czf $OUT/calibrate.tgz $R ;;
    conv:*|code:*)
      c=${step%%:*}; lim=${step#*:}; d=validation/$tag-tserve-$c
      [ $c = conv ] && T="--trace traces/azure-conv-2023.parquet --clip-in 1536 --clip-out 512"
      [ $c = code ] && T="--trace traces/azure-code-2023.parquet --clip-in 1792 --clip-out 288"
      timeout ${CASE_TIMEOUT:-330} python3 -m dcsim.commands.validate $EP --batching continuous --max-batch 64 \
        --profile ${PROFILE:?set PROFILE to size the arrivals} $T --arrivals replay --utilisation 0.6 --limit $lim \
        --settle-s 5 --out $d 2>&1 | grep -v -i warn | tee -a $OUT/log.txt
      tar czf $OUT/$c.tgz $(ls -d $d $d.partial 2>/dev/null) ;;
    *) log "unknown step $step" ;;
  esac
  log "step $step done at ${SECONDS}s"
done
