#!/usr/bin/python3
"""
bench_run.py - ResNet-50 inference: ckpt (dnnl backend) against PyTorch, in one invocation.

    /usr/bin/python3 bench/bench_run.py [--test-net PATH] [--runs 10] [--warmup 5] [--threads 2]
                                        [--rounds 4] [--batches 1,8] [--json]

Measures, on the same random-weight resnet50 checkpoint (1000 classes, cached in
$CKPT_BENCH_DIR or /tmp/ckpt-bench) and the same random input, at batch 1 and batch 8:

  * ckpt: `test_net bench` (the model built once, then --warmup runs, then --runs timed runs);
  * PyTorch eager: model.eval(), torch.no_grad(), torch.set_num_threads(THREADS);
  * PyTorch TorchScript: torch.jit.optimize_for_inference(torch.jit.script(model)).

Each side runs in its own process (so peak RSS is its own), ROUNDS times alternating so that a
burst of load from elsewhere hits all sides alike, and the medians (and minima) are over all
ROUNDS x RUNS timed runs. Also the whole-process time of classifying one image from the
checkpoint file: `test_net run` on a preprocessed .npy versus a Python script doing the same
steps (torch.load, build the model, load_state_dict, forward). Prints ratios; the goal of issue
5 is a batch-1 median <= 40 ms and >= 1.6x faster than eager, and peak memory below 1.5x the
float32 weight bytes + 50 MB.
"""

import argparse
import glob
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
PY = "/usr/bin/python3"
ARCH, CLASSES = "resnet50", 1000

TORCH_SIDE = r"""
import json, resource, sys, time
import torch, torchvision
path, batch, runs, warmup, threads, mode = sys.argv[1:7]
batch, runs, warmup, threads = int(batch), int(runs), int(warmup), int(threads)
torch.set_num_threads(threads)
m = torchvision.models.resnet50(num_classes=1000)
m.load_state_dict(torch.load(path))
m.eval()
g = torch.Generator().manual_seed(1)
x = torch.randn(batch, 3, 224, 224, generator=g)
with torch.no_grad():
    if mode == "jit":
        m = torch.jit.optimize_for_inference(torch.jit.script(m))
    ts = []
    for i in range(warmup + runs):
        t = time.perf_counter()
        m(x)
        if i >= warmup:
            ts.append((time.perf_counter() - t) * 1e3)
print(json.dumps({"ms": ts, "peak_rss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))
"""

ONE_IMAGE_PY = r"""
import sys, numpy as np, torch, torchvision
torch.set_num_threads(int(sys.argv[3]))
ckpt = torch.load(sys.argv[1])
m = torchvision.models.resnet50(num_classes=1000)
m.load_state_dict(ckpt)
m.eval()
with torch.no_grad():
    y = m(torch.from_numpy(np.load(sys.argv[2])))
print(torch.topk(y, 5).indices.tolist())
"""


def find_test_net(given):
    if given:
        return given
    env = os.environ.get("CKPT_TEST_NET")
    if env:
        return env
    cands = glob.glob(os.path.join(HERE, "..", "build*", "tests", "test_net"))
    cands += glob.glob(os.path.join(HERE, "..", "build*", "test_net"))
    cands = [c for c in cands if os.access(c, os.X_OK)]
    if not cands:
        sys.exit("error: no test_net binary; build the tree or pass --test-net")
    return max(cands, key=os.path.getmtime)


def make_checkpoint(folder):
    path = os.path.join(folder, "resnet50-random.pth")
    if not os.path.exists(path):
        os.makedirs(folder, exist_ok=True)
        code = ("import torch, torchvision; torch.manual_seed(0); "
                "m = torchvision.models.resnet50(num_classes=1000); "
                "torch.save(m.state_dict(), %r)" % (path + ".tmp"))
        subprocess.run([PY, "-c", code], check=True)
        os.replace(path + ".tmp", path)
    return path


def run_json(args):
    p = subprocess.run(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if p.returncode != 0:
        sys.exit("error: %s failed:\n%s" % (" ".join(args[:3]), p.stderr))
    return json.loads(p.stdout.strip().splitlines()[-1])


def wall(args):
    t = time.perf_counter()
    p = subprocess.run(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if p.returncode != 0:
        sys.exit("error: %s failed:\n%s" % (" ".join(args[:3]), p.stderr))
    return time.perf_counter() - t


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    ap.add_argument("--test-net")
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    test_net = find_test_net(a.test_net)
    folder = os.environ.get("CKPT_BENCH_DIR", os.path.join(tempfile.gettempdir(), "ckpt-bench"))
    path = make_checkpoint(folder)
    weight_mb = 25557032 * 4 / 1e6
    result = {"arch": ARCH, "threads": a.threads, "runs": a.runs, "warmup": a.warmup,
              "rounds": a.rounds, "load_avg": os.getloadavg()[0], "batches": {}}
    for batch in [int(b) for b in a.batches.split(",")]:
        sides = {"ckpt": [], "eager": [], "jit": []}
        rss = {"ckpt": 0, "eager": 0, "jit": 0}
        for _ in range(a.rounds):
            r = run_json([test_net, "bench", path, ARCH, str(CLASSES), "--batch", str(batch),
                          "--runs", str(a.runs), "--warmup", str(a.warmup),
                          "--threads", str(a.threads), "--backend", "dnnl"])
            sides["ckpt"] += r["ms"]
            rss["ckpt"] = max(rss["ckpt"], r["peak_rss_kb"])
            for mode in ("eager", "jit"):
                r = run_json([PY, "-c", TORCH_SIDE, path, str(batch), str(a.runs),
                              str(a.warmup), str(a.threads), mode])
                sides[mode] += r["ms"]
                rss[mode] = max(rss[mode], r["peak_rss_kb"])
        med = {k: statistics.median(v) for k, v in sides.items()}
        result["batches"][batch] = {
            "median_ms": med, "min_ms": {k: min(v) for k, v in sides.items()},
            "peak_rss_mb": {k: v / 1024 for k, v in rss.items()},
            "speedup_vs_eager": med["eager"] / med["ckpt"],
            "speedup_vs_jit": med["jit"] / med["ckpt"]}

    # whole process, one image from the file
    import numpy as np
    x = np.random.default_rng(1).standard_normal((1, 3, 224, 224)).astype(np.float32)
    inp = os.path.join(folder, "one.npy")
    np.save(inp, x)
    out = os.path.join(folder, "out.npy")
    c_times, py_times = [], []
    for _ in range(3):
        c_times.append(wall([test_net, "run", path, ARCH, str(CLASSES), inp, out,
                             "--threads", str(a.threads)]))
        py_times.append(wall([PY, "-c", ONE_IMAGE_PY, path, inp, str(a.threads)]))
    result["one_image_s"] = {"ckpt": statistics.median(c_times),
                             "python": statistics.median(py_times)}
    result["memory_goal_mb"] = 1.5 * weight_mb + 50

    if a.json:
        print(json.dumps(result, indent=1))
        return
    print("resnet50, %d threads, %d rounds x %d runs after %d warm-up (load average %.1f at start,"
          " %.1f at the end)" % (a.threads, a.rounds, a.runs, a.warmup, result["load_avg"],
                                 os.getloadavg()[0]))
    for batch, r in result["batches"].items():
        m, p = r["median_ms"], r["peak_rss_mb"]
        lo = r["min_ms"]
        print("batch %d: median ckpt %.1f ms, eager %.1f ms, jit %.1f ms -> %.2fx eager, %.2fx jit"
              % (batch, m["ckpt"], m["eager"], m["jit"], r["speedup_vs_eager"],
                 r["speedup_vs_jit"]))
        print("         minimum ckpt %.1f ms, eager %.1f ms, jit %.1f ms"
              % (lo["ckpt"], lo["eager"], lo["jit"]))
        print("         peak RSS: ckpt %.0f MB, eager %.0f MB, jit %.0f MB (goal < %.0f MB)"
              % (p["ckpt"], p["eager"], p["jit"], result["memory_goal_mb"]))
    o = result["one_image_s"]
    print("one image from the file, whole process: ckpt %.2f s, python %.2f s (%.1fx)"
          % (o["ckpt"], o["python"], o["python"] / o["ckpt"]))


if __name__ == "__main__":
    main()
