#!/usr/bin/python3
"""
bf16_accuracy.py - how far `--precision bf16` moves the logits, on the test suite's ResNets.

    /usr/bin/python3 bench/bf16_accuracy.py [--fixtures DIR] [--images 16] [--archs a,b]

For each fixture of tests/test_net.py (random weights, randomised BatchNorm statistics, stored
as float32/float16/bfloat16; made by that test under $CKPT_FIXTURES/net), IMAGES random inputs
of the fixture's size go through PyTorch 1.13 (float32, eval, the fixture's rounded weights),
ckpt fp32 and ckpt bf16 (`test_net run`, dnnl, 2 threads). Prints per architecture the max
relative logit error against PyTorch (max |ckpt - torch| / max(1, max |torch|), per image,
worst image) for fp32 and bf16, bf16 against fp32, and the top-1 and top-5 agreement of bf16
with PyTorch (top-5: the same set of five classes).
"""
import argparse
import glob
import importlib.util
import os
import subprocess
import sys
import tempfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))


def load_test_net_module():
    spec = importlib.util.spec_from_file_location("test_net_py",
                                                  os.path.join(HERE, "..", "tests", "test_net.py"))
    mod = importlib.util.module_from_spec(spec)
    sys.path.insert(0, os.path.join(HERE, "..", "tests"))
    spec.loader.exec_module(mod)
    return mod


def rel_err(a, b):
    """Worst image: max |a - b| / max(1, max |b|) per row."""
    return max(float(np.max(np.abs(x.astype(np.float64) - y))) / max(1.0, float(np.max(np.abs(y))))
               for x, y in zip(a, b))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    ap.add_argument("--fixtures", help="the net fixture folder (default: tests' NET_DIR)")
    ap.add_argument("--images", type=int, default=16)
    ap.add_argument("--archs")
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    tn = load_test_net_module()
    net_dir = a.fixtures or tn.NET_DIR
    test_net = tn.TEST_NET
    import torch
    import torchvision
    torch.set_num_threads(a.threads)
    rows = []
    tmp = tempfile.mkdtemp(prefix="ckpt-bf16-")
    for name, classes, dtype, shape, wrapped in tn.ARCHS:
        if a.archs and name not in a.archs.split(","):
            continue
        pth = os.path.join(net_dir, name + ".pth")
        if not os.path.exists(pth):
            print("%s: no fixture at %s (run tests/test_net.py once)" % (name, pth))
            continue
        obj = torch.load(pth, map_location="cpu")
        sd = obj["model"] if wrapped else obj
        model = getattr(torchvision.models, name)(num_classes=classes)
        model.load_state_dict({k: v.float() if v.is_floating_point() else v
                               for k, v in sd.items()})
        model.eval()
        gen = torch.Generator().manual_seed(12345)
        x = torch.randn(a.images, 3, shape[1], shape[2], generator=gen)
        with torch.no_grad():
            ref = model(x).numpy()
        inp = os.path.join(tmp, "x.npy")
        np.save(inp, x.numpy().astype(np.float32))
        outs = {}
        for prec in ("fp32", "bf16"):
            out = os.path.join(tmp, "y.npy")
            args = [test_net, "run", pth, name, str(classes), inp, out, "--backend", "dnnl",
                    "--threads", str(a.threads)] + (["--bf16"] if prec == "bf16" else [])
            p = subprocess.run(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            if p.returncode != 0:
                sys.exit("error: %s\n%s" % (" ".join(args), p.stderr))
            outs[prec] = np.load(out)
        top1 = float(np.mean(np.argmax(outs["bf16"], 1) == np.argmax(ref, 1)))
        k = min(5, classes)
        top5 = float(np.mean([set(np.argsort(-o)[:k]) == set(np.argsort(-r)[:k])
                              for o, r in zip(outs["bf16"], ref)]))
        top1_fp32 = float(np.mean(np.argmax(outs["fp32"], 1) == np.argmax(ref, 1)))
        rows.append((name, classes, "%dx%dx%d" % (a.images, shape[1], shape[2]),
                     rel_err(outs["fp32"], ref), rel_err(outs["bf16"], ref),
                     rel_err(outs["bf16"], outs["fp32"]), top1, top5, top1_fp32))
        print("%-18s done" % name, file=sys.stderr)
    print("| arch | classes | input | fp32 vs torch | bf16 vs torch | bf16 vs fp32 "
          "| bf16 top-1 = torch | bf16 top-5 set = torch | fp32 top-1 = torch |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print("| %s | %d | %s | %.1e | %.1e | %.1e | %.0f %% | %.0f %% | %.0f %% |"
              % (r[0], r[1], r[2], r[3], r[4], r[5], 100 * r[6], 100 * r[7], 100 * r[8]))


if __name__ == "__main__":
    main()
