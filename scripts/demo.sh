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
step $ckpt run "$file" "$seed"/images/digit-00{0..3}.png --resize 32 --crop 32 \
     --labels "$seed/labels.txt" --topk 2

echo
echo "== All $(ls "$seed"/images | wc -l) held-out images, against PyTorch's own predictions"
$ckpt run "$file" "$seed"/images/*.png --resize 32 --crop 32 --json --logits --repeat 3 \
    > "$seed/ckpt-run.json"
/usr/bin/python3 - "$seed" <<'PY'
import json, os, sys
seed = sys.argv[1]
exp = {r["image"]: r for r in json.load(open(os.path.join(seed, "expected.json")))["images"]}
run = json.load(open(os.path.join(seed, "ckpt-run.json")))
n = agree = correct = 0
worst = 0.0
for r in run["results"]:
    e = exp[os.path.basename(r["image"])]
    top = r["topk"][0]["index"]
    n += 1
    agree += top == e["torch_top1"]
    correct += top == e["label"]
    scale = max(1.0, max(abs(v) for v in e["torch_logits"]))
    worst = max(worst, max(abs(a - b) for a, b in zip(r["logits"], e["torch_logits"])) / scale)
print(f"accuracy {correct}/{n} = {correct / n:.1%}; same top-1 as PyTorch on {agree}/{n}; "
      f"largest logit difference {worst:.1e} of the largest logit; "
      f"3 runs bit-identical: {run['repeat']['bit_identical']}")
PY
