#!/usr/bin/env python3
"""The built-in default for the README's main job: the seed scenario, for real.

Trains a torchvision ResNet-18 (num_classes=10) on the handwritten digits that Debian's
python3-sklearn ships (8x8 greyscale, scaled up to 32x32 RGB), and saves what a training
script saves: {'model', 'optimizer', 'lr_scheduler', 'epoch', 'max_accuracy' (numpy.float64),
'config' (argparse.Namespace)}. Also writes the held-out images as PNG files, their labels, and
PyTorch's own predictions for them (the preprocessing ckpt run applies with --resize 32
--crop 32: ToTensor + ImageNet Normalize), so the C side can be compared.

Deterministic (fixed seeds, one thread) and cached: nothing is redone when OUT/.stamp matches.
Usage: /usr/bin/python3 demo/make_seed.py OUT
"""
import argparse
import hashlib
import json
import os
import sys

VERSION = "1"
EPOCHS = 6


def main():
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    stamp = os.path.join(out, ".stamp")
    me = hashlib.sha256(open(__file__, "rb").read()).hexdigest()
    if os.path.exists(stamp) and open(stamp).read() == me:
        print(f"seed: cached in {out}", file=sys.stderr)
        return

    import numpy as np
    import torch
    import torchvision
    from PIL import Image
    from sklearn.datasets import load_digits

    torch.manual_seed(0)
    torch.set_num_threads(1)
    digits = load_digits()
    imgs = (digits.images / 16.0 * 255.0).round().astype(np.uint8)  # 1797 x 8 x 8
    labels = digits.target.astype(np.int64)
    rng = np.random.default_rng(0)
    order = rng.permutation(len(imgs))
    test_idx, train_idx = order[:200], order[200:]

    mean = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)

    def to_input(a8):
        # what ckpt run does with --resize 32 --crop 32 on the saved 32x32 PNG
        img = Image.fromarray(a8).resize((32, 32), Image.BILINEAR).convert("RGB")
        t = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1).float()
        return (t / 255 - mean) / std

    x_train = torch.stack([to_input(imgs[i]) for i in train_idx])
    y_train = torch.from_numpy(labels[train_idx])
    x_test = torch.stack([to_input(imgs[i]) for i in test_idx])
    y_test = torch.from_numpy(labels[test_idx])

    config = argparse.Namespace(arch="resnet18", dataset="sklearn-digits-32px", epochs=EPOCHS,
                                batch_size=64, lr=0.05, momentum=0.9, weight_decay=5e-4)
    model = torchvision.models.resnet18(num_classes=10)
    opt = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                          weight_decay=config.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=EPOCHS)
    best = 0.0
    for epoch in range(EPOCHS):
        model.train()
        perm = torch.randperm(len(x_train))
        for k in range(0, len(perm), config.batch_size):
            b = perm[k:k + config.batch_size]
            loss = torch.nn.functional.cross_entropy(model(x_train[b]), y_train[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
        sched.step()
        model.eval()
        with torch.no_grad():
            acc = (model(x_test).argmax(1) == y_test).float().mean().item()
        best = max(best, acc)
        print(f"seed: epoch {epoch}: held-out accuracy {acc:.4f}", file=sys.stderr)

    ckpt = {"model": model.state_dict(), "optimizer": opt.state_dict(),
            "lr_scheduler": sched.state_dict(), "epoch": EPOCHS - 1,
            "max_accuracy": np.float64(round(best, 4)), "config": config}
    path = os.path.join(out, "rsp-resnet-18-ckpt.pth")
    torch.save(ckpt, path + ".tmp")
    os.replace(path + ".tmp", path)

    img_dir = os.path.join(out, "images")
    os.makedirs(img_dir, exist_ok=True)
    model.eval()
    with torch.no_grad():
        logits = model(x_test)
    records = []
    for j, i in enumerate(test_idx):
        name = f"digit-{j:03d}.png"
        Image.fromarray(imgs[i]).resize((32, 32), Image.BILINEAR).convert("RGB").save(
            os.path.join(img_dir, name))
        records.append({"image": name, "label": int(labels[i]),
                        "torch_top1": int(logits[j].argmax()),
                        "torch_logits": [float(v) for v in logits[j]]})
    with open(os.path.join(out, "labels.txt"), "w") as f:
        f.write("".join(f"digit {d}\n" for d in range(10)))
    with open(os.path.join(out, "expected.json"), "w") as f:
        json.dump({"accuracy": acc, "images": records}, f)
    with open(stamp, "w") as f:
        f.write(me)
    print(f"seed: {path} (held-out accuracy {acc:.4f})", file=sys.stderr)


if __name__ == "__main__":
    main()
