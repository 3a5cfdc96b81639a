#!/usr/bin/env bash
# Quick start: set everything up, then compress the embedded fine-tuned ResNet-20 to half
# its MACs (submodular selection with reweighting, then distillation from the unpruned
# model for a few minutes) and print a before/after table.
#   bash quickstart.sh                      # embedded 3k/1k-image CIFAR-10 (JPEG) subset
#   bash quickstart.sh --data DIR           # full CIFAR-10 (JPEG archives or cifar-10-batches-py)
set -euo pipefail
cd "$(dirname "$0")"
DATA=assets/cifar10-mini
MINUTES=3
if [ "${1:-}" = "--data" ]; then
  DATA=${2:?--data needs a folder}
  MINUTES=10
fi
bash scripts/setup.sh
OUT=runs/quickstart-$(date +%Y%m%d-%H%M%S)
.venv/bin/prunekit compress --model resnet20 --checkpoint checkpoints/resnet20-jpeg/model.pt \
  --data "$DATA" --target 0.5 --budget-minutes "$MINUTES" --out "$OUT"
