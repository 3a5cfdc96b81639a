#!/usr/bin/env bash
# Quick start: set everything up, then prune the embedded fine-tuned ResNet-20 to half its
# MACs, recover accuracy briefly, and print a before/after table.
#   bash quickstart.sh                      # embedded 3k/1k-image CIFAR-10 (JPEG) subset
#   bash quickstart.sh --data DIR           # full CIFAR-10 (JPEG archives or cifar-10-batches-py)
set -euo pipefail
cd "$(dirname "$0")"
DATA=assets/cifar10-mini
EPOCHS=10
if [ "${1:-}" = "--data" ]; then
  DATA=${2:?--data needs a folder}
  EPOCHS=2
fi
bash scripts/setup.sh
OUT=runs/quickstart-$(date +%Y%m%d-%H%M%S)
.venv/bin/prunekit prune --model resnet20 --checkpoint checkpoints/resnet20-jpeg/model.pt \
  --data "$DATA" --target 0.5 --set round_to=4 --finetune-epochs "$EPOCHS" \
  --set finetune_lr=0.02 --out "$OUT"
