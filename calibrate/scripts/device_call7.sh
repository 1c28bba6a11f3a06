#!/bin/bash
# One call on whichever GPU comes (TAG from the card: h200i or h100p unless TAG is set): the paged replay loop's
# host time between steps (plan paged-host-loop), then the power dynamics plan on the hf-graph engine (bursts of
# 0.1-9 s after 1.5 s of idle, for `dcsim fit --dynamics-from`). Raw files land in $OUT, one .tgz per plan.
name=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)
case "$name" in *H200*) d=h200i ;; *H100*) d=h100p ;; *) d=gpu ;; esac
tag=${TAG:-$d}
echo "card: $name -> tag $tag"
QUICK=1 bash calibrate/scripts/paged_call.sh "$tag" llama-2-7b 3 calibrate/plans/paged-host-loop.yaml
mv "$OUT/log.txt" "$OUT/log-host-loop.txt"
MINUTES=4.5 bash calibrate/scripts/plans_call.sh "$tag" calibrate/plans/power-dynamics.yaml
echo "card $name tag $tag total ${SECONDS}s" | tee -a "$OUT/log.txt"
