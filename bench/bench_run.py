#!/usr/bin/python3
"""
bench_run.py - ResNet-50 inference: ckpt (dnnl backend) against PyTorch, in one invocation.

    /usr/bin/python3 bench/bench_run.py [--test-net PATH] [--ckpt PATH] [--runs 10]
        [--warmup 3] [--threads 1,2] [--batches 1,8] [--rounds 3] [--baseline OLD_TEST_NET]
        [--json]

On the same random-weight resnet50 checkpoint (1000 classes, cached in $CKPT_BENCH_DIR or
/tmp/ckpt-bench) and the same random input, for every thread count and batch size:

  * ckpt fp32 and (where the CPU has it) bf16: `test_net bench` (model built once, --warmup
    runs, --runs timed runs); --baseline runs an older test_net as one more side;
  * PyTorch eager: model.eval(), torch.no_grad(), torch.set_num_threads(THREADS);
  * PyTorch TorchScript: torch.jit.optimize_for_inference(torch.jit.script(model)).

Each side runs in its own process (so its peak RSS is its own), and the sides alternate round
by round, so a burst of load from elsewhere hits all of them alike; min-max and median are
over all ROUNDS x RUNS timed runs. Then the whole process of classifying one image from the
checkpoint file: `ckpt run FILE --input one.npy` (fp32 and bf16) against a Python script doing
torch.load, model construction, load_state_dict and one forward pass, alternating too; wall
time and the child's peak RSS (wait4). The script first asks for priority over the machine's
other work (`echo -20 > /proc/self/autogroup`, Linux with autogrouping; it needs the right to
raise priority, so it may fail, which is reported).
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
import shutil

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


def wall_rss(args):
    """Wall seconds and peak RSS (MB) of one child process."""
    t = time.perf_counter()
    p = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, ru = os.wait4(p.pid, 0)
    dt = time.perf_counter() - t
    err = p.stderr.read().decode()
    p.stderr.close()
    p.returncode = os.waitstatus_to_exitcode(status)
    if p.returncode != 0:
        sys.exit("error: %s failed:\n%s" % (" ".join(args[:3]), err))
    return dt, ru.ru_maxrss / 1024


def autogroup_priority():
    try:
        with open("/proc/self/autogroup", "w") as f:
            f.write("-20")
        with open("/proc/self/autogroup") as f:
            return f.read().strip()
    except OSError as e:
        return "not raised (%s)" % e.strerror


def find_ckpt(given, test_net):
    if given:
        return given
    for c in (os.path.join(os.path.dirname(os.path.dirname(test_net)), "ckpt"),
              os.path.join(os.path.dirname(test_net), "ckpt")):
        if os.access(c, os.X_OK):
            return c
    return shutil.which("ckpt")


def spread(v):
    return "%.1f (%.1f-%.1f)" % (statistics.median(v), min(v), max(v))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    ap.add_argument("--test-net")
    ap.add_argument("--ckpt")
    ap.add_argument("--baseline", help="an older test_net, run as one more side")
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--one-image-rounds", type=int, default=5)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    prio = autogroup_priority()
    test_net = find_test_net(a.test_net)
    ckpt = find_ckpt(a.ckpt, test_net)
    folder = os.environ.get("CKPT_BENCH_DIR", os.path.join(tempfile.gettempdir(), "ckpt-bench"))
    path = make_checkpoint(folder)
    bf16 = subprocess.run([test_net, "bench", path, ARCH, str(CLASSES), "--runs", "1",
                           "--warmup", "0", "--threads", "1", "--batch", "1", "--bf16"],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE).returncode == 0
    result = {"arch": ARCH, "runs": a.runs, "warmup": a.warmup, "rounds": a.rounds,
              "autogroup": prio, "load_avg_start": os.getloadavg(), "forward": [],
              "bf16_available": bf16}

    configs = [(int(t), int(b)) for t in a.threads.split(",") for b in a.batches.split(",")]
    sides = ["ckpt"] + (["ckpt-bf16"] if bf16 else []) + (["baseline"] if a.baseline else []) \
        + ["eager", "jit"]
    ms = {(c, s): [] for c in configs for s in sides}
    rss = {(c, s): 0.0 for c in configs for s in sides}
    for _ in range(a.rounds):
        for (threads, batch) in configs:
            for side in sides:
                common = ["--batch", str(batch), "--runs", str(a.runs), "--warmup",
                          str(a.warmup), "--threads", str(threads), "--backend", "dnnl"]
                if side in ("ckpt", "ckpt-bf16", "baseline"):
                    exe = a.baseline if side == "baseline" else test_net
                    r = run_json([exe, "bench", path, ARCH, str(CLASSES)] + common +
                                 (["--bf16"] if side == "ckpt-bf16" else []))
                else:
                    r = run_json([PY, "-c", TORCH_SIDE, path, str(batch), str(a.runs),
                                  str(a.warmup), str(threads), side])
                ms[((threads, batch), side)] += r["ms"]
                rss[((threads, batch), side)] = max(rss[((threads, batch), side)],
                                                    r["peak_rss_kb"] / 1024)
    for c in configs:
        med = {s: statistics.median(ms[(c, s)]) for s in sides}
        result["forward"].append({
            "threads": c[0], "batch": c[1],
            "ms": {s: {"median": med[s], "min": min(ms[(c, s)]), "max": max(ms[(c, s)])}
                   for s in sides},
            "peak_rss_mb": {s: rss[(c, s)] for s in sides},
            "ckpt_vs_eager": med["eager"] / med["ckpt"], "ckpt_vs_jit": med["jit"] / med["ckpt"],
            "bf16_vs_fp32": med["ckpt"] / med["ckpt-bf16"] if bf16 else None})

    # whole process, one image from the file
    import numpy as np
    x = np.random.default_rng(1).standard_normal((1, 3, 224, 224)).astype(np.float32)
    inp = os.path.join(folder, "one.npy")
    np.save(inp, x)
    threads = max(int(t) for t in a.threads.split(","))
    whole = {"ckpt": [], "python": []}
    if bf16:
        whole["ckpt-bf16"] = []
    peak = {k: 0.0 for k in whole}
    for _ in range(a.one_image_rounds):
        for side in whole:
            if side == "python":
                args = [PY, "-c", ONE_IMAGE_PY, path, inp, str(threads)]
            else:
                args = [ckpt, "run", path, "--input", inp, "--threads", str(threads)]
                args += ["--precision", "bf16"] if side == "ckpt-bf16" else []
            t, r = wall_rss(args)
            whole[side].append(t * 1e3)
            peak[side] = max(peak[side], r)
    prof = subprocess.run([ckpt, "run", path, "--input", inp, "--threads", str(threads),
                           "--profile"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                          text=True).stderr
    result["one_image"] = {"threads": threads,
                           "ms": {k: {"median": statistics.median(v), "min": min(v),
                                      "max": max(v)} for k, v in whole.items()},
                           "peak_rss_mb": peak,
                           "python_vs_ckpt": statistics.median(whole["python"]) /
                           statistics.median(whole["ckpt"]),
                           "profile": prof}
    result["load_avg_end"] = os.getloadavg()
    if a.json:
        print(json.dumps(result, indent=1))
        return
    print("resnet50 224x224, %d rounds alternating the sides x %d timed runs after %d warm-up;"
          " ms as median (min-max)" % (a.rounds, a.runs, a.warmup))
    print("priority: autogroup %s; load average %.2f at start, %.2f at the end"
          % (prio, result["load_avg_start"][0], result["load_avg_end"][0]))
    for f in result["forward"]:
        print("batch %d, %d thread%s:" % (f["batch"], f["threads"], "" if f["threads"] == 1
                                            else "s"))
        for s in sides:
            v = ms[((f["threads"], f["batch"]), s)]
            print("  %-10s %-24s %7.1f images/s  peak RSS %4.0f MB"
                  % (s, spread(v), 1e3 * f["batch"] / statistics.median(v),
                     f["peak_rss_mb"][s]))
        line = "  ckpt: %.2fx eager, %.2fx optimize_for_inference" % (f["ckpt_vs_eager"],
                                                                     f["ckpt_vs_jit"])
        if f["bf16_vs_fp32"]:
            line += "; bf16 %.2fx fp32" % f["bf16_vs_fp32"]
        if a.baseline:
            line += "; %.2fx baseline" % (f["ms"]["baseline"]["median"] / f["ms"]["ckpt"]["median"])
        print(line)
    o = result["one_image"]
    print("one image from the .pth, whole process, %d threads (%d rounds):" % (threads,
                                                                             a.one_image_rounds))
    for k in whole:
        print("  %-10s %-24s peak RSS %4.0f MB" % (k, spread(whole[k]), o["peak_rss_mb"][k]))
    print("  python / ckpt: %.1fx" % o["python_vs_ckpt"])
    print("ckpt run --profile (last run):")
    lines = prof.splitlines()
    table = [i for i, l in enumerate(lines) if "per image, mean" in l]
    sys.stdout.write("".join("  " + l + "\n" for l in lines[:table[0] if table else None]))


if __name__ == "__main__":
    main()
