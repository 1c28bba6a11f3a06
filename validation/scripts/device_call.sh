#!/bin/bash
# One device call: DEVICE_TAG PROFILE CASE[:LIMIT] [CASE[:LIMIT] ...]. Installs the carried wheels, runs each case and packs
# its folder into $OUT as a .tgz (the raw files come back whatever happens to a later case).
source calibrate/scripts/device_setup.sh
source validation/scripts/cases.sh
tag=$1; prof=$2; shift 2
# BENCH_METER=1: first time one meter read on this GPU (benchmarks/bench_meter_overhead.py, a few seconds)
[ -n "${BENCH_METER:-}" ] && python3 benchmarks/bench_meter_overhead.py --csv $OUT/meter_overhead.csv 2>&1 | tee -a $OUT/log.txt
for spec in "$@"; do
  c=${spec%%:*}; lim=""; [ "$c" != "$spec" ] && lim=${spec#*:}
  echo "== case $c ${lim:+(limit $lim) }at ${SECONDS}s" | tee -a $OUT/log.txt
  left=$(( 585 - SECONDS )); [ $left -gt ${CASE_TIMEOUT:-300} ] && left=${CASE_TIMEOUT:-300}
  timeout $left bash -c "source validation/scripts/cases.sh; case_$c $tag $prof $lim" 2>&1 | grep -v -i warn | tee -a $OUT/log.txt
  d=validation/$tag-${c//_/-}
  tar czf $OUT/$c.tgz $(ls -d $d $d.partial 2>/dev/null)
done
echo "total ${SECONDS}s" | tee -a $OUT/log.txt
