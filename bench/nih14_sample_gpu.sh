#!/usr/bin/env bash
# Train DenseNet-121 on ../shared/datasets/nih14-sample (423 images, all 14 labels) on a GPU
# and print its validation AUC and training images/s (issue 3's documented GPU run).
#
# Usage: bash bench/nih14_sample_gpu.sh [DATA_DIR] [OUT_DIR] [extra cxr train flags...]
#   DATA_DIR  default ../shared/datasets/nih14-sample
#   OUT_DIR   default /tmp/cxr-nih14-sample
# With ImageNet weights available offline (torch hub cache or $CXR_WEIGHTS_DIR), add
# `--pretrained imagenet`; without them the backbone starts from random weights and 423
# images teach it little: the figure then measures the pipeline, not the model.
set -euo pipefail
DATA=${1:-../shared/datasets/nih14-sample}
OUT=${2:-/tmp/cxr-nih14-sample}
shift $(( $# > 2 ? 2 : $# )) || true
CXR=${CXR:-cxr}
DEVICE=${DEVICE:-cuda}
mkdir -p "$OUT"
$CXR data split "$DATA" --out "$OUT/split" --fractions train=0.7,val=0.15,test=0.15 --seed 0
for s in train val test; do
  $CXR prepare "$OUT/split/$s.csv" --size 224 --out "$OUT/cache/$s" --no-progress
done
$CXR train "$OUT/cache/train" "$OUT/cache/val" --out "$OUT/run" --overwrite --backbone densenet121 \
  --precision bf16 --channels-last --batch-size 32 --phase1-epochs 2 --phase2-epochs 10 \
  --device "$DEVICE" --no-progress "$@"
$CXR evaluate "$OUT/cache/test" --model "$OUT/run/best.safetensors" --out "$OUT/report" --device "$DEVICE" \
  --no-progress
python3 - "$OUT/run/history.csv" <<'PY'
import csv, sys
rows = list(csv.DictReader(open(sys.argv[1])))
best = max(rows, key=lambda r: float(r["val_macro_auc"]))
speed = sorted(float(r["images_per_second"]) for r in rows)
print(f"best validation macro AUC {float(best['val_macro_auc']):.4f} at epoch {best['epoch']}; "
      f"training images/s median {speed[len(speed) // 2]:.0f} (max {speed[-1]:.0f})")
PY
