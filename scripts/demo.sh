#!/usr/bin/env bash
# The main job on its built-in default: the seed scenario, for real.
#
# Sets up a fresh Debian 12 machine, builds ckpt, trains (once; cached in build/demo) a
# ResNet-18 on the handwritten digits Debian's scikit-learn ships, saved as a training
# checkpoint with the layout of the seed ({'model', 'optimizer', 'lr_scheduler', 'epoch',
# 'max_accuracy', 'config'}), and then runs what a user would: look inside it, scan it, and ask
# what a strict load needs.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup-debian.sh
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j2 --target ckpt_cli >/dev/null
ckpt=build/ckpt
seed=build/demo
/usr/bin/python3 demo/make_seed.py "$seed"
file="$seed/rsp-resnet-18-ckpt.pth"

step() { printf '\n\033[1m$ %s\033[0m\n' "$*"; "$@" || true; }

echo
echo "== The wrong load, in PyTorch: load_state_dict(torch.load(p), strict=False)"
/usr/bin/python3 - "$file" <<'PY'
import sys, torch, torchvision
m = torchvision.models.resnet18(num_classes=10)
r = m.load_state_dict(torch.load(sys.argv[1], map_location="cpu"), strict=False)
print(f"missing {len(r.missing_keys)} keys, unexpected {r.unexpected_keys}: "
      "no weight was loaded, the model keeps its random initialisation")
PY

step $ckpt inspect "$file"
step $ckpt scan "$file"
step $ckpt check "$file"
