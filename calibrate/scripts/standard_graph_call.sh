#!/bin/bash
# One device call: calibrate the hf-graph engine with the standard plan, one batch size at
# a time (calibrate/plans/standard-grouped.yaml), time-boxed so the call ends inside its 600 s; the same command
# resumes in a later call. Usage: bash calibrate/scripts/standard_graph_call.sh TAG (h200 or h100); raw files
# land in $OUT. On the H200 the validation replays follow, sized by the datasheet transfer of the H100 profile
# (the H200's own is fitted from this call's runs afterwards, and compared with `dcsim validate --compare-only DIR
# --profile ...`):
#   PLAN=calibrate/plans/standard-grouped.yaml CASE_TIMEOUT=300 bash validation/scripts/device_call.sh h200g \
#     profiles/derived/h200--llama-2-7b--hf-graph-bf16--from-h100-sxm-80gb.yaml gsm8k_poisson:130 azure_conv:100
#   ... azure_code:520 gsm8k_static:235
# To resume, the paused folder must be in the tree the call runs from: unpack the call's .tgz here first (a call
# that started without it began a new sweep: runs/h200-llama-2-7b-hf-graph-standard-rerun).
tag=${1:?usage: standard_graph_call.sh TAG}
source calibrate/scripts/device_setup.sh
# RUN names another folder: calibrate/runs/h200-llama-2-7b-hf-graph-standard was recorded with the prefill's
# counter read inside the timed run, so this version of dcsim refuses to resume it (identity 'prefill_energy')
R=calibrate/runs/${RUN:-$tag-llama-2-7b-hf-graph-standard}
python3 -m dcsim.commands.calibrate --device cuda:0 --model-arch llama-2-7b --no-progress --backend hf-graph \
  --plan calibrate/plans/standard-grouped.yaml --out $R --max-minutes ${MINUTES:-7.5} 2>&1 | grep -v -i warn \
  | tee -a $OUT/log.txt
tar czf $OUT/$tag-hf-graph-standard.tgz $R
echo "total ${SECONDS}s" | tee -a $OUT/log.txt
