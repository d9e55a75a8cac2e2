#!/usr/bin/env bash
# The foundation's acceptance figures, on ../shared (CPU is fine, about 5 minutes):
#   test top-1 of the pretrained CIFAR ResNets (published: 91.73 / 92.63 / 93.10 / 93.39 %),
#   resnet56 pruned uniformly to half its MACs, reloaded from its files, and evaluated
#   without and with BN recalibration.
#     bash scripts/reproduce_foundation.sh [OUT_DIR]
set -euo pipefail
shared="$(cd "$(dirname "$0")/../.." && pwd)/shared"
out="${1:-runs/foundation}"
for file in resnet20-12fca82f resnet32-d509ac18 resnet44-014dd654 resnet56-4bfd9763; do
  autoprune eval --arch "${file%%-*}" --checkpoint "$shared/pretrained/cifar10/$file.th" \
    --data-dir "$shared/data/cifar10"
done
autoprune prune --arch resnet56 --checkpoint "$shared/pretrained/cifar10/resnet56-4bfd9763.th" \
  --target-flops 0.5 --method uniform --criterion l1 --out "$out/r56-uniform-50" --overwrite
autoprune eval --checkpoint "$out/r56-uniform-50/model.pt" --data-dir "$shared/data/cifar10" --recal-batches 20
python "$(dirname "$0")/bench_engine.py"
