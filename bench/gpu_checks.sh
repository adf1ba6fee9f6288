#!/usr/bin/env bash
# The GPU checks of the study, as one script. Each step is bounded by its own timeout; pick steps to fit the time
# a device lends (the default: all; their limits add up to 24 minutes). Results: bench/gpu_results/ (H100, the first
# four steps) and bench/gpu_results/h200/ (head_batched, default_grid, clip_epoch).
#   pretrain_throughput  pre-training step, in-memory vs DataLoader
#   gpu_epoch            one `gpu`-preset epoch (ResNet-18, torch.compile)
#   torchrun_epoch       one epoch under torchrun --nproc_per_node=1 (DDP/NCCL)
#   head_tuning          one NMTune head: cached K views vs online re-encoding
#   head_profile         issue 10: where a head step's time goes, one head vs 8 batched vs 8 stacked (profiler)
#   svd_routes           issue 10: the SVD of the dominant-singular-value term by each cuSOLVER driver (time, accuracy)
#   head_batched         issue 10: the heads of one default run batched vs one by one (bench --quick)
#   default_grid         issue 10: the `default` study's grid on this GPU, stage times (timing.csv)
#   streamed             folder data streamed through DataLoader workers on CUDA (bf16, channels_last)
#   clip_epoch           one `clip`-preset epoch on CUDA (bf16 autocast, AdamW, the towers)
# Usage: bash bench/gpu_checks.sh OUT_DIR [STEP ...]   (NMTUNE_DATA must hold the Fashion-MNIST idx .gz files)
# A step's time limit can be changed with LIMIT_<step>=SECONDS; the default grid's workers with GRID_JOBS (default 8);
# SVD_DRIVER=gesvda (or gesvd, gesvdj) makes head_profile, head_batched and default_grid use that cuSOLVER driver.
set -u
OUT=${1:-bench/results/gpu}
shift || true
STEPS=${*:-pretrain_throughput gpu_epoch torchrun_epoch head_tuning head_profile svd_routes head_batched default_grid streamed clip_epoch}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
$PY -c "import torch, timm, xarray; print('torch', torch.__version__, 'timm', timm.__version__, 'xarray', xarray.__version__, torch.cuda.get_device_name())" | tee -a "$OUT/gpu.txt"
wanted() { [[ " $STEPS " == *" $1 "* ]]; }
step() { local name=$1 limit_var=LIMIT_$1; local limit=${!limit_var:-$2}; shift 2; wanted "$name" || return 0
  echo "=== $name (limit $limit s)"; local t0=$SECONDS
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1; local rc=$?; tail -n 25 "$OUT/$name.log"
  echo "=== $name rc=$rc in $((SECONDS - t0)) s"; }
step pretrain_throughput 120 $PY bench/pretrain_throughput.py --out "$OUT/pretrain_throughput.json"
step gpu_epoch 180 $PY -m nmtune_lib.pretraining.pretrain --preset gpu --noise-ratio 0.1 --seed 0 --set epochs=1 \
  --run-root "$OUT/runs" --no-progress
step torchrun_epoch 100 torchrun --standalone --nproc_per_node=1 -m nmtune_lib.pretraining.pretrain --preset gpu \
  --noise-ratio 0.0 --seed 0 --set epochs=1 compile=false --run-root "$OUT/runs_ddp" --no-progress
step head_tuning 120 $PY bench/head_tuning.py --device cuda --views 4 --epochs 10 --out "$OUT/head_tuning.json"
step head_profile 90 $PY bench/head_step_profile.py --device cuda --heads 8 --svd-driver "${SVD_DRIVER:-}" --out "$OUT/head_profile.json"
step svd_routes 90 $PY bench/svd_routes.py --device cuda --out "$OUT/svd_routes.json"
step head_batched 150 $PY bench/head_tuning.py --quick --device cuda --svd-driver "${SVD_DRIVER:-}" --json "$OUT/head_batched.json"
step default_grid 300 $PY -m nmtune_lib.study.sweep sweep --preset default --set device=cuda --set "svd_driver=${SVD_DRIVER:-}" --jobs "${GRID_JOBS:-8}" \
  --run-root "$OUT/grid"
if wanted default_grid; then  # the study folder's tables: timing.csv (written after every run), config.yaml, claims
  mkdir -p "$OUT/default_grid"
  cp "$OUT"/grid/default/*.csv "$OUT"/grid/default/*.yaml "$OUT/default_grid/" 2>/dev/null
  find "$OUT/grid" -name "*.done" | sed "s|^$OUT/grid/||" | sort > "$OUT/default_grid/done_markers.txt"
  # per notebook, finished or cut off by the limit (timing.csv counts whole runs only)
  $PY bench/stage_times.py "$OUT/grid" --csv "$OUT/default_grid/stage_times.csv" | tee "$OUT/default_grid/stages.txt"
fi
if wanted streamed; then  # a small ImageNet-style folder of real images (Fashion-MNIST test PNGs, 3 classes)
  $PY - "$OUT/folders" <<'PY'
import sys
from pathlib import Path
from PIL import Image
from nmtune_lib.data.datasets import load_dataset
root, test = Path(sys.argv[1]), load_dataset("fashion_mnist", "test")
for c, name in enumerate(("n01440764", "n01443537", "n01484850")):
    images = test.images[test.labels == c][:600]
    for split, part in (("train", images[:500]), ("val", images[500:])):
        (root / "imagenet" / split / name).mkdir(parents=True, exist_ok=True)
        for i, image in enumerate(part):
            Image.fromarray(image[0].numpy()).save(root / "imagenet" / split / name / f"{i:04d}.png")
PY
fi
step streamed 120 $PY -m nmtune_lib.pretraining.pretrain --preset smoke --noise-ratio 0.1 --seed 0 --dataset imagenet \
  --device cuda --set data_root="$OUT/folders" stream=true loader_workers=4 img_size=64 epochs=2 \
  --run-root "$OUT/runs_stream" --no-progress
step clip_epoch 150 $PY -m nmtune_lib.pretraining.pretrain --preset clip --noise-ratio 0.1 --seed 0 --device cuda \
  --set epochs=1 --run-root "$OUT/runs_clip" --no-progress
for name in runs runs_stream runs_clip; do
  cp "$OUT"/$name/*/*/*/seed0/pretrain.json "$OUT/${name}_pretrain.json" 2>/dev/null
done
cp "$OUT"/runs/gpu/fashion_mnist/*/seed0/pretrain.json "$OUT/gpu_epoch_pretrain.json" 2>/dev/null
rm -rf "$OUT/runs" "$OUT/runs_ddp" "$OUT/runs_stream" "$OUT/runs_clip" "$OUT/grid" "$OUT/folders"
