#!/bin/bash
# One device call on a multi-GPU host: the tensor-parallel sweeps of ARCH at each TP size in TPS that the host's GPU
# count allows (1, 2, 4, 8), each time-boxed to MINUTES with the hf-graph engine and the standard plan grouped by
# batch size (calibrate/plans/standard-grouped.yaml, one CUDA graph per batch size per rank). The standard plan does
# not finish in one call: every folder is tarred into $OUT, and the same command resumes it in a later call once its
# .tgz is unpacked here. A TP size whose replica cannot hold the model (llama-2-70b at TP 1) is skipped.
# Usage: bash calibrate/scripts/tp_call.sh TAG ARCH MINUTES [TPS] [PLAN]
#   e.g. bash calibrate/scripts/tp_call.sh h200x8 llama-2-13b 2 "1 2 4 8"
#        bash calibrate/scripts/tp_call.sh h200x8 llama-2-70b 3 "2 4 8"
# NVLink multicast stays off in everything this call starts; nothing here changes a power limit or a clock.
tag=${1:?usage: tp_call.sh TAG ARCH MINUTES [TPS] [PLAN]}; arch=${2:?ARCH}; minutes=${3:?MINUTES}
tps=${4:-1 2 4 8}; plan=${5:-calibrate/plans/standard-grouped.yaml}
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
source calibrate/scripts/device_setup.sh
gpus=$(nvidia-smi --query-gpu=index --format=csv,noheader | wc -l)
echo "== $gpus GPUs; TP sizes asked: $tps" | tee -a $OUT/log.txt
nvidia-smi topo -m 2>&1 | tee -a $OUT/log.txt
for n in $tps; do
  if [ "$n" -gt "$gpus" ]; then echo "== TP $n: skipped ($gpus GPUs)" | tee -a $OUT/log.txt; continue; fi
  if [ "$arch" = llama-2-70b ] && [ "$n" -lt 2 ]; then echo "== TP $n: skipped (70B needs 2 GPUs)" | tee -a $OUT/log.txt; continue; fi
  R=calibrate/runs/$tag-$arch-hf-graph-$(basename "$plan" .yaml)-tp$n
  echo "== TP $n: $plan -> $R at ${SECONDS}s" | tee -a $OUT/log.txt
  if [ "$n" -eq 1 ]; then tp=(); else tp=(--tensor-parallel "$n"); fi
  python3 -m dcsim.commands.calibrate --device cuda:0 --model-arch "$arch" --random-weights --no-progress \
    --backend hf-graph "${tp[@]}" --plan "$plan" --out "$R" --max-minutes "$minutes" 2>&1 | grep -v -i warn \
    | tee -a $OUT/log.txt
  tar czf "$OUT/$tag-$arch-tp$n.tgz" "$R"
done
echo "total ${SECONDS}s" | tee -a $OUT/log.txt
