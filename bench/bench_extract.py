#!/usr/bin/env python3
"""Benchmark for issue 4: extracting the ResNet-50 weights (~100 MB) from a ~300 MB training
checkpoint, against `torch.save(torch.load(p)['model'], out)` in the same run.

Reuses bench_inspect.py's training checkpoint (bench/out/resnet50-train-ckpt.pth, built once).
With a warm page cache it times, median of --repeats runs, every output deleted before each run
(so neither side pays for replacing an old file):
  * `ckpt extract P -o out.pth` and `-o out.safetensors` as whole processes (they fsync the
    output before renaming it into place; torch.save does not fsync);
  * torch.save(torch.load(P)['model'], out) in process (torch imported beforehand), and the
    whole `python3 -c "import torch; ..."` process;
and prints MB/s of output, the ratios, and the peak resident memory of each (GNU time's %M for
the processes; for torch also the growth over the process's resident size after
`import torch`). Goals (issue 4): at least 5x faster than PyTorch, peak memory no more than the
output's size plus a few MB.

Usage: /usr/bin/python3 bench/bench_extract.py [--build DIR] [--repeats N] [--out DIR]
Use a build without sanitizers (e.g. cmake -DCMAKE_BUILD_TYPE=Release).
"""
import argparse
import json
import os
import statistics
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
from bench_inspect import make_checkpoint, median_run  # noqa: E402

TORCH_CHILD = r"""
import json, resource, sys, time
import torch
src, out, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
import os
def rss_mb():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
base = rss_mb()
times, synced = [], []
for i in range(2 * n):
    if os.path.exists(out):
        os.unlink(out)
    t0 = time.perf_counter()
    torch.save(torch.load(src, map_location="cpu")["model"], out)
    if i % 2:   # as durable as ckpt's output: flushed to disk
        fd = os.open(out, os.O_RDONLY)
        os.fsync(fd)
        os.close(fd)
    (synced if i % 2 else times).append(time.perf_counter() - t0)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
print(json.dumps({"times": times, "synced": synced, "base_rss_mb": base, "peak_rss_mb": peak}))
"""


def rm(*paths):
    def go():
        for p in paths:
            if os.path.exists(p):
                os.unlink(p)
    return go


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", default=os.path.join(ROOT, "build"))
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--out", default=os.path.join(ROOT, "bench", "out"))
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    src = os.path.join(a.out, "resnet50-train-ckpt.pth")
    if not os.path.exists(src):
        print("building the training checkpoint (once)...", file=sys.stderr)
        make_checkpoint(src)
    ckpt = os.path.join(a.build, "ckpt")
    py = sys.executable
    out_pth = os.path.join(a.out, "extract-ckpt.pth")
    out_st = os.path.join(a.out, "extract-ckpt.safetensors")
    out_torch = os.path.join(a.out, "extract-torch.pth")

    with open(src, "rb") as f:   # warm the page cache
        while f.read(1 << 24):
            pass

    pth_wall, pth_rss = median_run([ckpt, "extract", src, "-o", out_pth], a.repeats,
                                   rm(out_pth))
    st_wall, st_rss = median_run([ckpt, "extract", src, "-o", out_st], a.repeats, rm(out_st))
    pth_size = os.path.getsize(out_pth)
    st_size = os.path.getsize(out_st)

    n_torch = max(3, a.repeats // 2)
    t = json.loads(subprocess.check_output([py, "-c", TORCH_CHILD, src, out_torch,
                                            str(n_torch)]))
    torch_inproc = statistics.median(t["times"])
    torch_size = os.path.getsize(out_torch)
    rm(out_torch)()
    torch_wall, torch_rss = median_run(
        [py, "-c", "import sys, torch; torch.save(torch.load(sys.argv[1], map_location='cpu')"
                   "['model'], sys.argv[2])", src, out_torch], 3, rm(out_torch))
    # the outputs hold the same tensors
    diff = subprocess.run([ckpt, "diff", out_torch, out_pth], capture_output=True, text=True)
    diff_st = subprocess.run([ckpt, "diff", out_torch, out_st], capture_output=True, text=True)

    mb = lambda n: n / 1e6  # noqa: E731
    print(f"source: {src} ({mb(os.path.getsize(src)):.0f} MB); output "
          f"{mb(pth_size):.1f} MB .pth, {mb(st_size):.1f} MB .safetensors, torch's "
          f"{mb(torch_size):.1f} MB")
    print(f"ckpt extract -> .pth          {pth_wall*1e3:7.1f} ms  {mb(pth_size)/pth_wall:7.0f} MB/s"
          f"  peak RSS {pth_rss:6.1f} MB   (whole process, fsync included)")
    print(f"ckpt extract -> .safetensors  {st_wall*1e3:7.1f} ms  {mb(st_size)/st_wall:7.0f} MB/s"
          f"  peak RSS {st_rss:6.1f} MB")
    print(f"torch.save(torch.load(p)['model'])  in process {torch_inproc*1e3:7.1f} ms"
          f"  {mb(torch_size)/torch_inproc:7.0f} MB/s  peak RSS {t['peak_rss_mb']:6.1f} MB"
          f" ({t['peak_rss_mb'] - t['base_rss_mb']:.1f} MB over 'import torch')")
    print(f"                                    whole process {torch_wall*1e3:7.1f} ms"
          f"  peak RSS {torch_rss:6.1f} MB")
    torch_synced = statistics.median(t["synced"])
    print(f"                                    in process + fsync {torch_synced*1e3:7.1f} ms")
    r_in, r_whole = torch_inproc / pth_wall, torch_wall / pth_wall
    r_sync = torch_synced / pth_wall
    print(f"ratio (.pth): {r_whole:.1f}x against the torch command, {r_in:.1f}x against torch in "
          f"process ({r_sync:.1f}x with its fsync); .safetensors {torch_wall / st_wall:.1f}x / "
          f"{torch_inproc / st_wall:.1f}x ({torch_synced / st_wall:.1f}x)")
    print(f"ckpt diff torch-output ckpt-output: exit {diff.returncode} (.pth), "
          f"{diff_st.returncode} (.safetensors)")
    worst = max(pth_wall, st_wall)
    goals = [("at least 5x faster than the PyTorch command (whole process)",
              torch_wall / worst >= 5),
             ("at least 5x faster than torch in process (import excluded, fsync included)",
              torch_synced / worst >= 5),
             ("peak RSS <= output size + 8 MB", max(pth_rss, st_rss) <= mb(pth_size) + 8),
             ("same tensors as torch's output", diff.returncode == 0 and diff_st.returncode == 0)]
    for name, ok in goals:
        print(f"goal: {name}: {'met' if ok else 'NOT met'}")
    rm(out_pth, out_st, out_torch)()


if __name__ == "__main__":
    main()
