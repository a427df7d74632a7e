#!/usr/bin/env python3
"""Benchmark for issue 2: opening and listing a ResNet-50 training checkpoint.

Builds (once, cached) a training checkpoint with the seed's layout -- resnet50 weights, an Adam
optimizer state after one step, a scheduler, numpy scalars and an argparse.Namespace, about
300 MB -- then prints, from one run:
  * whole-process time of `ckpt inspect FILE` against `python3 -c "import torch; torch.load(FILE)"`
  * in-process time of ckpt_open + listing (bench_open) against torch.load(map_location='cpu')
  * peak resident memory of `ckpt inspect` and of the Python process
and the ratios. Goal (issue 2): listing under 10 ms, >= 50x less than torch.load alone, peak
memory under 20 MB.

Usage: /usr/bin/python3 bench/bench_inspect.py [--build DIR] [--repeats N]
"""
import argparse, json, os, statistics, subprocess, sys, time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def make_checkpoint(path):
    import numpy as np, torch, torchvision
    torch.manual_seed(0)
    model = torchvision.models.resnet50(num_classes=1000)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.StepLR(opt, 30)
    model(torch.randn(2, 3, 64, 64)).sum().backward()
    opt.step()
    sched.step()
    ckpt = {"model": model.state_dict(), "optimizer": opt.state_dict(),
            "lr_scheduler": sched.state_dict(), "epoch": 299,
            "max_accuracy": np.float64(0.9327),
            "config": argparse.Namespace(arch="resnet50", lr=1e-3, batch_size=256, epochs=300)}
    tmp = path + ".tmp"
    torch.save(ckpt, tmp)
    os.replace(tmp, path)


def run_measured(cmd, before=None):
    """Wall time (s) and peak RSS (MB) of one child process, after calling before() if given.
    The peak comes from GNU time: a forked child's ru_maxrss starts from its parent's, which
    would count this script's."""
    if before:
        before()
    t0 = time.perf_counter()
    p = subprocess.run(["/usr/bin/time", "-f", "%M"] + cmd, stdout=subprocess.DEVNULL,
                       stderr=subprocess.PIPE, text=True)
    dt = time.perf_counter() - t0
    if p.returncode != 0:
        sys.exit(f"bench: {' '.join(cmd)} failed: {p.stderr}")
    return dt, int(p.stderr.strip().splitlines()[-1]) / 1024.0


def median_run(cmd, n, before=None):
    runs = [run_measured(cmd, before) for _ in range(n)]
    return statistics.median(r[0] for r in runs), max(r[1] for r in runs)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", default=os.path.join(ROOT, "build"))
    ap.add_argument("--repeats", type=int, default=11)
    ap.add_argument("--out", default=os.path.join(ROOT, "bench", "out"))
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    path = os.path.join(a.out, "resnet50-train-ckpt.pth")
    if not os.path.exists(path):
        print("building the training checkpoint (once)...", file=sys.stderr)
        make_checkpoint(path)
    ckpt_bin = os.path.join(a.build, "ckpt")
    bench_open = os.path.join(a.build, "bench_open")
    py = sys.executable

    # warm the page cache for both readers
    with open(path, "rb") as f:
        while f.read(1 << 24):
            pass

    ck_wall, ck_rss = median_run([ckpt_bin, "inspect", path], a.repeats)
    py_wall, py_rss = median_run([py, "-c", f"import torch; torch.load({path!r}, map_location='cpu')"],
                                 max(3, a.repeats // 3))
    inproc = json.loads(subprocess.check_output([bench_open, path, "50"]))
    # torch.load alone, in process (import excluded)
    import torch
    times = []
    for _ in range(5):
        t0 = time.perf_counter()
        torch.load(path, map_location="cpu")
        times.append(time.perf_counter() - t0)
    tl = statistics.median(times)

    size_mb = os.path.getsize(path) / 1e6
    print(f"file: {path} ({size_mb:.0f} MB, {inproc['tensors']} tensors)")
    print(f"whole process   ckpt inspect {ck_wall*1e3:8.1f} ms   python torch.load {py_wall*1e3:8.1f} ms"
          f"   ratio {py_wall/ck_wall:6.1f}x")
    print(f"in process      ckpt open+list {inproc['median_ms']:6.2f} ms   torch.load alone {tl*1e3:8.1f} ms"
          f"   ratio {tl*1e3/inproc['median_ms']:6.0f}x")
    print(f"peak RSS        ckpt inspect {ck_rss:8.1f} MB   python torch.load {py_rss:8.1f} MB")
    goals = [("open+list under 10 ms", inproc["median_ms"] < 10),
             ("at least 50x less than torch.load alone", tl * 1e3 / inproc["median_ms"] >= 50),
             ("ckpt inspect peak RSS under 20 MB", ck_rss < 20)]
    for name, ok in goals:
        print(f"goal: {name}: {'met' if ok else 'NOT met'}")


if __name__ == "__main__":
    main()
