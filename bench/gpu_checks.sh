#!/usr/bin/env bash
# The GPU checks of the study, as one script: pre-training throughput (in-memory vs DataLoader), one `gpu`-preset
# epoch, a one-GPU torchrun (DDP/NCCL) epoch, and head tuning with cached vs online views.
# Usage: bash bench/gpu_checks.sh OUT_DIR   (NMTUNE_DATA must hold the Fashion-MNIST idx .gz files)
set -u
OUT=${1:-bench/results/gpu}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
$PY -c "import torch, timm, xarray; print('torch', torch.__version__, 'timm', timm.__version__, 'xarray', xarray.__version__, torch.cuda.get_device_name())" | tee -a "$OUT/gpu.txt"
step() { local name=$1 limit=$2; shift 2; echo "=== $name"; local t0=$SECONDS
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1; local rc=$?; tail -n 25 "$OUT/$name.log"
  echo "=== $name rc=$rc in $((SECONDS - t0)) s"; }
step pretrain_throughput 120 $PY bench/pretrain_throughput.py --out "$OUT/pretrain_throughput.json"
step gpu_epoch 180 $PY -m nmtune_lib.pretrain --preset gpu --noise-ratio 0.1 --seed 0 --set epochs=1 \
  --run-root "$OUT/runs" --no-progress
step torchrun_epoch 100 torchrun --standalone --nproc_per_node=1 -m nmtune_lib.pretrain --preset gpu \
  --noise-ratio 0.0 --seed 0 --set epochs=1 compile=false --run-root "$OUT/runs_ddp" --no-progress
step head_tuning 120 $PY bench/head_tuning.py --device cuda --views 4 --epochs 10 --out "$OUT/head_tuning.json"
cp "$OUT"/runs/gpu/fashion_mnist/*/seed0/pretrain.json "$OUT/gpu_epoch_pretrain.json" 2>/dev/null
rm -rf "$OUT/runs" "$OUT/runs_ddp"
