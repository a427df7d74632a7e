#!/usr/bin/python3
"""
test_check.py - `ckpt check` and `ckpt diff` against PyTorch's own load_state_dict(strict=True).

The conformance matrix of issue 3: for each of the ten torchvision ResNets (at a class count
of its own), wrappers (none, module., _orig_mod., model., module._orig_mod.), containers
(bare state dict, training checkpoint with optimizer/scheduler/numpy/Namespace and an EMA copy,
ImageNet-example {'state_dict', 'best_acc1'}, Lightning), formats (zip, legacy) and mutations
(key deleted, keys added, head resized, num_batches_tracked removed with and without
_metadata, a tensor transposed, a 1-element 1-D tensor for a 0-dim buffer, a non-tensor
value), the expected verdict is what PyTorch does: the state dict is taken where the fixture
put it, unwrapped by the reference `strip` below (keys and _metadata), and loaded into
`torchvision.models.ARCH(num_classes=N)` with strict=True. ckpt must give the same verdict,
the same missing / unexpected / size-mismatch lists in the same order, and PyTorch's exact
RuntimeError text. `--arch auto` must name the architecture and class count; `--against` is
checked with a small non-ResNet model.

Fixtures keep real shapes but tiny files: every tensor is `torch.zeros(1).expand(shape)`
(stride 0, one-element storage). They and PyTorch's verdicts are cached under
$CKPT_FIXTURES/check/ with a stamp (a hash of the generator code and the torch version), so
only the first run pays for building the models.
"""

import argparse
import collections
import hashlib
import inspect
import json
import os
import re
import shutil
import sys
import tempfile
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import ckpt_testlib as L  # noqa: E402

FIX = os.path.join(L.CKPT_FIXTURES or os.path.join(tempfile.gettempdir(), "ckpt-fixtures"),
                   "check")
TIMEOUT = 60.0

# ---- generator (everything up to "end of generator" feeds the stamp) -------------------------

GEN_VERSION = "3"

ARCHS = ["resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "resnext50_32x4d",
         "resnext101_32x8d", "resnext101_64x4d", "wide_resnet50_2", "wide_resnet101_2"]
CLASSES = {"resnet18": 1000, "resnet34": 10, "resnet50": 51, "resnet101": 1000,
           "resnet152": 7, "resnext50_32x4d": 100, "resnext101_32x8d": 1000,
           "resnext101_64x4d": 3, "wide_resnet50_2": 1000, "wide_resnet101_2": 21}
WRAPPERS = ["", "module.", "_orig_mod.", "model.", "module._orig_mod."]


def fast_init():
    """Model construction without random initialisation: the verdict of load_state_dict does
    not depend on the values, and resnet152/wide_resnet101_2 take seconds to initialise."""
    import torch
    for name in ("kaiming_normal_", "kaiming_uniform_", "uniform_", "normal_"):
        setattr(torch.nn.init, name, lambda t, *a, **k: t)


def build(arch, nc):
    import torchvision
    return getattr(torchvision.models, arch)(num_classes=nc)


def zeros_like_sd(sd, metadata=True):
    """The state dict with every tensor a stride-0 view of a one-element storage."""
    import torch
    out = collections.OrderedDict()
    for k, v in sd.items():
        out[k] = tiny(v.shape, v.dtype)
    if metadata and hasattr(sd, "_metadata"):
        out._metadata = collections.OrderedDict((m, dict(d)) for m, d in sd._metadata.items())
    return out


def tiny(shape, dtype=None):
    import torch
    dtype = dtype or torch.float32
    if len(shape) == 0:
        return torch.zeros((), dtype=dtype)
    return torch.zeros(1, dtype=dtype).expand(*shape)


def wrap(sd, prefix):
    """What a wrapper module's state_dict() looks like: every key and module path prefixed,
    the wrapper itself recorded as the root module of _metadata."""
    if not prefix:
        return sd
    out = collections.OrderedDict((prefix + k, v) for k, v in sd.items())
    meta = getattr(sd, "_metadata", None)
    if meta is not None:
        nm = collections.OrderedDict()
        parts = prefix[:-1].split(".")
        for i in range(len(parts)):
            nm[".".join(parts[:i])] = {"version": 1}
        for m, d in meta.items():
            nm[prefix[:-1] + ("." + m if m else "")] = dict(d)
        out._metadata = nm
    return out


def strip(sd, prefix):
    """The reference unwrapping: OrderedDict((k[len(p):] if k.startswith(p) else k, v)), and the
    same on _metadata's module paths (the wrapper's own entries give way to the model's)."""
    if not prefix:
        return sd
    out = collections.OrderedDict()
    for k, v in sd.items():
        out[k[len(prefix):] if k.startswith(prefix) else k] = v
    meta = getattr(sd, "_metadata", None)
    if meta is not None:
        p0 = prefix[:-1]
        nm = collections.OrderedDict()
        for m, d in meta.items():
            if not (m == p0 or m.startswith(prefix)):
                nm[m] = d
        for m, d in meta.items():
            if m == p0:
                nm[""] = d
            elif m.startswith(prefix):
                nm[m[len(prefix):]] = d
        out._metadata = nm
    return out


def namespace():
    return argparse.Namespace(arch="resnet", lr=0.1, epochs=300, batch_size=256,
                              data_path="/data/imagenet", amp=True)


def optimizer_sd(sd, n=3):
    """An SGD state_dict() shape: int-keyed per-parameter state, param_groups."""
    import torch
    keys = [k for k in sd if not k.endswith(("running_mean", "running_var",
                                             "num_batches_tracked"))]
    state = {i: {"momentum_buffer": tiny(sd[keys[i]].shape)} for i in range(min(n, len(keys)))}
    return {"state": state, "param_groups": [{"lr": 0.1, "momentum": 0.9, "dampening": 0,
                                              "weight_decay": 1e-4, "nesterov": False,
                                              "params": list(range(len(keys)))}]}


def container(kind, sd, arch):
    """(object to save, path to the state dict)."""
    import numpy as np
    import torch
    if kind == "bare":
        return sd, []
    if kind == "training":
        ema = collections.OrderedDict((k, v) for k, v in sd.items())
        return collections.OrderedDict([
            ("model", sd), ("optimizer", optimizer_sd(sd)),
            ("lr_scheduler", {"milestones": {30: 1, 60: 1}, "last_epoch": 299, "gamma": 0.1,
                              "_last_lr": [0.001]}),
            ("epoch", 299), ("max_accuracy", np.float64(0.9327)), ("model_ema", ema),
            ("scaler", {"scale": 65536.0, "growth_factor": 2.0, "_growth_tracker": 17}),
            ("config", namespace())]), ["model"]
    if kind == "imagenet":
        return {"epoch": 90, "arch": arch, "state_dict": sd, "best_acc1": torch.tensor(76.13),
                "optimizer": optimizer_sd(sd)}, ["state_dict"]
    if kind == "lightning":
        return {"epoch": 3, "global_step": 1000, "pytorch-lightning_version": "1.9.0",
                "state_dict": sd,
                "loops": {"fit_loop": {"state_dict": {}, "epoch_progress": {"current": 3}}},
                "callbacks": {"ModelCheckpoint{'monitor': 'val_acc'}": {
                    "monitor": "val_acc", "best_model_score": torch.tensor(0.91),
                    "best_model_path": "/ckpt/epoch=3.ckpt", "current_score": torch.tensor(0.91),
                    "dirpath": "/ckpt", "best_k_models": {}, "kth_best_model_path": "",
                    "kth_value": torch.tensor(float("inf")), "last_model_path": ""}},
                "optimizer_states": [optimizer_sd(sd)],
                "lr_schedulers": [{"step_size": 30, "gamma": 0.1, "last_epoch": 3}],
                "hparams_name": "kwargs", "hyper_parameters": {"lr": 0.01, "arch": arch}}, \
            ["state_dict"]
    raise ValueError(kind)


def mutate(kind, sd, nc):
    """A changed copy of a (zeros) state dict, as users' files get broken."""
    import torch
    out = collections.OrderedDict(sd)
    if hasattr(sd, "_metadata"):
        out._metadata = sd._metadata
    if kind == "deleted":
        del out["layer1.0.conv1.weight"]
        del out["fc.bias"]
    elif kind == "added":
        # rejected by different modules: layer1.0, the root, layer4, the fc module
        out["layer1.0.foo.weight"] = tiny((3,))
        out["head.weight"] = tiny((5, 5))
        out["layer4.9.conv1.weight"] = tiny((1,))
        out["fc.weight_g"] = tiny((2,))
        # one module rejecting two keys: PyTorch names its _extra_state first, whatever the
        # dict's order (Module._load_from_state_dict checks it before its loop)
        out["layer2.bogus"] = tiny((1,))
        out["layer2._extra_state"] = tiny((1,))
    elif kind == "head":
        out["fc.weight"] = tiny((nc + 5, sd["fc.weight"].shape[1]))
        out["fc.bias"] = tiny((nc + 5,))
    elif kind in ("nbt_meta", "nbt_plain"):
        for k in [k for k in out if k.endswith("num_batches_tracked")]:
            del out[k]
        if kind == "nbt_plain":
            out = dict(out)
    elif kind == "transposed":
        out["conv1.weight"] = sd["conv1.weight"].transpose(0, 1)
        out["fc.weight"] = tiny((sd["fc.weight"].shape[1], nc))
    elif kind == "onedim":
        out["bn1.num_batches_tracked"] = torch.tensor([7])
        out["layer1.0.bn1.num_batches_tracked"] = torch.tensor([1, 2])
    elif kind == "nontensor":
        out["fc.bias"] = 3
        out["bn1.running_var"] = None
    else:
        raise ValueError(kind)
    return out


def reference(model, obj, path, prefix, whole=False):
    """What PyTorch says when this model loads obj[path...] unwrapped by prefix."""
    sd = obj
    for p in path:
        sd = sd[p]
    sd = strip(sd, prefix)
    exp = {"ok": True, "error_text": None, "missing": [], "unexpected": [], "mismatch": [],
           "errors": []}
    try:
        model.load_state_dict(sd, strict=True)
    except RuntimeError as e:
        text = str(e)
        exp["ok"] = False
        exp["error_text"] = text
        lines = text.split("\n\t")[1:]
        for line in lines:
            if line.startswith("Missing key(s) in state_dict: "):
                exp["missing"] = re.findall(r'"([^"]*)"', line)
            elif line.startswith("Unexpected key(s) in state_dict: "):
                exp["unexpected"] = re.findall(r'"([^"]*)"', line)
            else:
                exp["errors"].append(line)
                m = re.match(r"size mismatch for (\S+): copying a param with shape "
                             r"torch\.Size\(\[(.*?)\]\) from checkpoint, the shape in current "
                             r"model is torch\.Size\(\[(.*?)\]\)\.$", line)
                if m:
                    dims = lambda s: [int(x) for x in s.split(", ")] if s else []  # noqa
                    exp["mismatch"].append([m.group(1), dims(m.group(2)), dims(m.group(3))])
    if exp["ok"] or not exp["errors"]:
        # strict=False returns the same lists when nothing else raises: check the parse
        r = model.load_state_dict(sd, strict=False)
        assert list(r.missing_keys) == exp["missing"], (r.missing_keys, exp["missing"])
        assert list(r.unexpected_keys) == exp["unexpected"]
    if whole and isinstance(obj, dict):
        try:
            r = model.load_state_dict(obj, strict=False)
            exp["whole_file"] = {"missing": len(r.missing_keys),
                                 "unexpected": len(r.unexpected_keys)}
        except RuntimeError:
            exp["whole_file"] = None
    return exp


def save(obj, name, legacy=False):
    import torch
    path = os.path.join(FIX, name)
    torch.save(obj, path, _use_new_zipfile_serialization=not legacy)
    return name


class Net:
    """A small non-ResNet model for --against (built lazily: torch is imported late)."""

    @staticmethod
    def make(n=10):
        import torch.nn as nn
        import torch

        class Net(nn.Module):
            def __init__(self, n):
                super().__init__()
                self.features = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(),
                                              nn.Conv2d(8, 16, 3, bias=False))
                self.norm = nn.LayerNorm(16)
                self.head = nn.Linear(16, n)
                self.register_buffer("scale", torch.ones(1))
                self.register_buffer("scratch", torch.zeros(2), persistent=False)
        return Net(n)


def generate_arch(arch, cases):
    nc = CLASSES[arch]
    model = build(arch, nc)
    base = zeros_like_sd(model.state_dict())
    idx = ARCHS.index(arch)

    n_params = sum(p.numel() for p in model.parameters())

    def add(name, obj, path, prefix, args=(), legacy=False, into=None, whole=False, **extra):
        fname = save(obj, "%s-%s.pt" % (arch, name), legacy)
        exp = reference(into or model, obj, path, prefix, whole=whole and bool(path or prefix))
        if not name.startswith(("mut-", "noprefix")):
            exp["tensors"] = len(base)
            exp["parameters"] = n_params
        cases.append(dict(name="%s/%s" % (arch, name), file=fname, args=list(args), arch=arch,
                          nc=extra.pop("nc", nc), path=path, prefix=prefix, expected=exp,
                          **extra))

    # wrappers, bare state dicts, --arch auto
    for w in WRAPPERS:
        add("bare-%s" % (w.replace(".", "_") or "none"), wrap(base, w), [], w, whole=True)
    # containers
    for kind, w in (("training", "" if idx % 2 else "module."), ("imagenet", "module."),
                    ("lightning", "model.")):
        obj, path = container(kind, wrap(base, w), arch)
        add(kind, obj, path, w, whole=True)
    # formats
    obj, path = container("training", wrap(base, "module."), arch)
    add("training-legacy", obj, path, "module.", legacy=True, whole=True)
    add("bare-legacy", base, [], "", legacy=True)
    # explicit architecture, right and wrong class count
    add("explicit", base, [], "", args=["--arch", arch, "--num-classes", str(nc)], explicit=True)
    # mutations: on a bare dict for even archs, in a DDP training checkpoint for odd ones
    for kind in ("deleted", "added", "head", "nbt_meta", "nbt_plain", "transposed", "onedim",
                 "nontensor"):
        sd = mutate(kind, base, nc)
        if idx % 2:
            obj, path = container("training", wrap(sd, "module."), arch)
            w = "module."
        else:
            obj, path, w = sd, [], ""
        args = ["--arch", arch, "--num-classes", str(nc)]
        add("mut-%s" % kind, obj, path, w, args=args, explicit=True)
        if kind == "head":
            # auto reads the class count from fc.weight: resnet(num_classes=nc+5) loads it
            other = build(arch, nc + 5)
            add("mut-head-auto", obj, path, w, into=other, nc=nc + 5)
            del other
    # the user forgot the prefix: --strip-prefix '' with the architecture named
    add("noprefix", wrap(base, "module."), [], "",
        args=["--arch", arch, "--num-classes", str(nc), "--strip-prefix", ""], explicit=True)
    del model


def generate_against(cases):
    import torch
    net = Net.make(10)
    tmpl = net.state_dict()
    save(tmpl, "net-template.pt")
    save(wrap(tmpl, "module."), "net-template-ddp.pt")
    base = zeros_like_sd(tmpl)

    def add(name, obj, path, prefix, tname="net-template.pt"):
        fname = save(obj, "net-%s.pt" % name)
        exp = reference(net, obj, path, prefix)
        cases.append(dict(name="net/%s" % name, file=fname, args=["--against", tname],
                          arch=None, nc=None, path=path, prefix=prefix, expected=exp,
                          template="Net"))

    add("ok", {"model": wrap(base, "module."), "epoch": 3}, ["model"], "module.")
    add("ok-ddp-template", base, [], "", tname="net-template-ddp.pt")
    sd = collections.OrderedDict(base)
    sd._metadata = base._metadata
    del sd["features.1.running_mean"]
    sd["features.2.weight"] = tiny((3,))      # the ReLU, a module without state
    sd["features.0.foo"] = tiny((3,))
    sd["extra"] = tiny((1,))
    sd["norm.weight"] = tiny((17,))
    add("broken", sd, [], "")
    nbt = collections.OrderedDict((k, v) for k, v in base.items()
                                  if not k.endswith("num_batches_tracked"))
    nbt._metadata = base._metadata
    add("nbt-meta", nbt, [], "")
    add("nbt-plain", dict(nbt), [], "")
    add("head", zeros_like_sd(Net.make(5).state_dict()), [], "")


def generate_values(cases, extra):
    """Real values where the value warnings and diff look (the rest tiny, to keep files small)."""
    import torch
    shapes = build("resnet18", 10).state_dict()
    g = torch.Generator().manual_seed(1)
    real = ("conv1.weight", "bn1.running_mean", "bn1.running_var", "layer1.0.conv1.weight",
            "layer2.0.conv1.weight", "fc.weight", "fc.bias")

    def values(dtype=torch.float32):
        sd = collections.OrderedDict()
        for k, v in shapes.items():
            if k in real:
                t = torch.randn(v.shape, generator=g) * 0.05
                if k.endswith("running_var"):
                    t = torch.rand(v.shape, generator=g) + 0.5
                sd[k] = t.to(dtype)
            elif v.dtype == torch.float32:
                sd[k] = tiny(v.shape, dtype)
            else:
                sd[k] = tiny(v.shape, v.dtype)
        sd._metadata = shapes._metadata
        return sd

    sd = values()
    save(sd, "values-a.pt")
    train = {"model": wrap(sd, "module."), "optimizer": optimizer_sd(sd), "epoch": 7}
    save(train, "values-train.pt", legacy=True)
    b = collections.OrderedDict((k, v.clone() if k in real else v) for k, v in sd.items())
    b._metadata = sd._metadata
    b["layer1.0.conv1.weight"][0, 0, 0, 0] += 1e-3
    b["fc.bias"][3] = -b["fc.bias"][3] - 0.25
    del b["layer4.1.bn2.num_batches_tracked"]
    b["extra.weight"] = torch.ones(2)
    b["fc.weight"] = torch.zeros(5, 512)
    save(b, "values-b.pt")
    half = collections.OrderedDict((k, v.half() if v.is_floating_point() and k in real
                                    else tiny(v.shape, torch.float16)
                                    if v.is_floating_point() else v) for k, v in sd.items())
    save(half, "values-half.pt")
    init = collections.OrderedDict()  # BatchNorm buffers as constructed: mean 0, variance 1
    for k, v in shapes.items():
        init[k] = (torch.ones(1).expand(*v.shape) if k.endswith("running_var")
                   else tiny(v.shape, v.dtype))
    init._metadata = shapes._metadata
    save(init, "values-bninit.pt")
    bad = collections.OrderedDict((k, v.clone() if k in real else v) for k, v in sd.items())
    bad["fc.weight"][1, 2] = float("nan")
    bad["layer2.0.conv1.weight"][0, 0, 1, 1] = float("inf")
    save(bad, "values-nonfinite.pt")

    def diffs(pa, pb, ka=None, kb=None, pre_a="", pre_b=""):
        a = torch.load(os.path.join(FIX, pa), map_location="cpu")
        b = torch.load(os.path.join(FIX, pb), map_location="cpu")
        for k in ka or []:
            a = a[k]
        for k in kb or []:
            b = b[k]
        a, b = strip(a, pre_a), strip(b, pre_b)
        out = collections.OrderedDict()
        for k in list(a) + [k for k in b if k not in a]:
            if k not in b:
                out[k] = {"status": "only_a"}
            elif k not in a:
                out[k] = {"status": "only_b"}
            elif a[k].shape != b[k].shape:
                out[k] = {"status": "shape"}
            else:
                d = (a[k].double() - b[k].double()).abs()
                mx = float(d.max()) if d.numel() else 0.0
                if a[k].dtype != b[k].dtype:
                    st = "dtype"
                else:
                    st = "same" if torch.equal(a[k], b[k]) else "different"
                out[k] = {"status": st, "max_abs": mx,
                          "differing": int((a[k] != b[k]).sum()) if st != "dtype" else None}
        return out

    extra["diff_same"] = diffs("values-train.pt", "values-a.pt", ["model"], None, "module.")
    extra["diff_ab"] = diffs("values-a.pt", "values-b.pt")
    extra["diff_half"] = diffs("values-a.pt", "values-half.pt")


def generate():
    import torch
    fast_init()
    if os.path.isdir(FIX):
        shutil.rmtree(FIX)
    os.makedirs(FIX)
    t0 = time.time()
    cases, extra = [], {}
    for arch in ARCHS:
        generate_arch(arch, cases)
    generate_against(cases)
    generate_values(cases, extra)
    with open(os.path.join(FIX, "cases.json"), "w") as f:
        json.dump({"cases": cases, "extra": extra}, f)
    with open(os.path.join(FIX, ".stamp"), "w") as f:
        f.write(stamp_value())
    print("test_check: generated %d cases in %.1f s" % (len(cases), time.time() - t0))

# ---- end of generator ------------------------------------------------------------------------


def stamp_value():
    with open(os.path.abspath(__file__), encoding="utf-8") as f:
        src = f.read()
    gen = src[src.index("# ---- generator"):src.index("# ---- end of generator")]
    import torch
    return hashlib.sha256((gen + torch.__version__).encode()).hexdigest()


def load_cases():
    stamp = os.path.join(FIX, ".stamp")
    fresh = False
    if os.path.exists(stamp):
        with open(stamp) as f:
            fresh = f.read() == stamp_value()
    if not fresh:
        generate()
    with open(os.path.join(FIX, "cases.json")) as f:
        return json.load(f)


DATA = None


def data():
    global DATA
    if DATA is None:
        DATA = load_cases()
    return DATA


def check(tc, name, *args, codes=(0, 1)):
    rc, out, err = L.run_ckpt(["check", os.path.join(FIX, name)] + list(args) + ["--json"],
                              timeout=TIMEOUT)
    L.check_no_crash(tc, rc, out, err, "ckpt check %s %s" % (name, " ".join(args)))
    tc.assertIn(rc, codes, "ckpt check %s %s: exit %r: %s" % (name, args, rc, err[:1000]))
    if rc == 2:
        return rc, None, err
    return rc, json.loads(out), err


class Matrix(unittest.TestCase):
    """Every case: ckpt's verdict and lists are PyTorch's."""

    @classmethod
    def setUpClass(cls):
        L.require_bin()
        data()

    def test_matrix(self):
        cases = data()["cases"]
        failures = []
        auto_seen = set()
        for c in cases:
            with self.subTest(case=c["name"]):
                args = list(c["args"])
                if c.get("template"):
                    args[1] = os.path.join(FIX, args[1])
                rc, j, err = check(self, c["file"], *args)
                exp = c["expected"]
                self.assertEqual(rc, 0 if exp["ok"] else 1, "%s: exit %d" % (c["name"], rc))
                self.assertEqual(j["ok"], exp["ok"])
                self.assertEqual(j["missing"], exp["missing"], c["name"])
                self.assertEqual(j["unexpected"], exp["unexpected"], c["name"])
                self.assertEqual([[m["key"], m["checkpoint"], m["model"]]
                                  for m in j["size_mismatch"]], exp["mismatch"], c["name"])
                text = exp["error_text"]
                if text and c.get("template"):
                    text = text.replace("for %s:" % c["template"], "for Model:", 1)
                self.assertEqual(j["error_text"], text, c["name"])
                self.assertEqual(j["state_dict_path"], c["path"], c["name"])
                self.assertEqual(j["prefix"], c["prefix"], c["name"])
                self.assertEqual(j["arch"], c["arch"], c["name"])
                self.assertEqual(j["num_classes"], c["nc"], c["name"])
                if "whole_file" in exp and exp["whole_file"] is not None:
                    self.assertIsNotNone(j["whole_file"], c["name"])
                    self.assertEqual(j["whole_file"]["missing"], exp["whole_file"]["missing"])
                    self.assertEqual(j["whole_file"]["unexpected"],
                                     exp["whole_file"]["unexpected"])
                if "tensors" in exp:
                    self.assertEqual(j["tensors"], exp["tensors"], c["name"])
                    self.assertEqual(j["parameters"], exp["parameters"], c["name"])
                if not c.get("explicit") and c["arch"]:
                    auto_seen.add(c["arch"])
        self.assertEqual(sorted(auto_seen), sorted(ARCHS), "--arch auto on every architecture")
        print("test_check: %d matrix cases" % len(cases))

    def test_candidates(self):
        # the training checkpoint holds 'model' and 'model_ema': 'model' wins, both listed
        rc, j, _ = check(self, "resnet50-training.pt")
        paths = [c["path"] for c in j["candidates"]]
        self.assertIn(["model"], paths)
        self.assertIn(["model_ema"], paths)
        self.assertEqual([c["path"] for c in j["candidates"] if c["chosen"]], [["model"]])
        codes = [w["code"] for w in j["warnings"]]
        self.assertIn("training_checkpoint", codes)
        self.assertIn("strict_false", codes)
        self.assertIn("other_candidates", codes)
        self.assertEqual(j["tensors"], 320)
        rc, j, _ = check(self, "resnet50-training.pt", "--key", "model_ema")
        self.assertEqual(j["state_dict_path"], ["model_ema"])
        self.assertTrue(j["ok"])
        rc, j, err = check(self, "resnet50-training.pt", "--key", "nope", codes=(2,))
        self.assertIn("nope", err)
        rc, j, err = check(self, "resnet50-training.pt", "--key", "epoch", codes=(2,))

    def test_strip_prefix(self):
        rc, j, _ = check(self, "resnet34-bare-module_.pt", "--strip-prefix", "module.")
        self.assertTrue(j["ok"])
        self.assertEqual(j["prefix"], "module.")
        # nothing recognisable without the prefix removed: an error, not a verdict
        rc, j, err = check(self, "resnet34-bare-module_.pt", "--strip-prefix", "", codes=(2,))
        self.assertIn("--against", err)

    def test_human_output(self):
        c = next(c for c in data()["cases"] if c["name"] == "resnet50/mut-deleted")
        rc, out, err = L.run_ckpt(["check", os.path.join(FIX, c["file"])] + c["args"],
                                  timeout=TIMEOUT)
        self.assertEqual(rc, 1, err)
        self.assertIn("RuntimeError: " + c["expected"]["error_text"] + "\n", out)
        self.assertIn("model.load_state_dict(sd, strict=True)", out)
        rc, out, err = L.run_ckpt(["check", os.path.join(FIX, "resnet18-training.pt")],
                                  timeout=TIMEOUT)
        self.assertEqual(rc, 0, err)
        # its Python floats, numpy scalars and argparse.Namespace: 1.13's weights_only refuses
        # the file, so the weights go through ckpt extract (which strips 'module.')
        self.assertIn("#   ckpt extract ", out)
        self.assertIn("import numpy, argparse and run the file's pickle", out)
        self.assertIn("sd = torch.load('weights.pth', map_location='cpu', weights_only=True)", out)
        self.assertNotIn("weights_only=False", out.replace("# weights_only=False", ""))
        self.assertNotIn("consume_prefix_in_state_dict_if_present", out)
        self.assertIn("resnet18(num_classes=1000)", out)
        rc, out, err = L.run_ckpt(["check", "--help"])
        self.assertEqual(rc, 0)
        self.assertIn("--against", out)

    def test_python_lines_load(self):
        """The lines ckpt prints load the file in PyTorch with strict=True."""
        import torch
        fast_init()
        for name in ("resnet18-training.pt", "resnet18-lightning.pt",
                     "resnet18-bare-module__orig_mod_.pt"):
            rc, j, _ = check(self, name)
            ns = L.run_python(self, j["python"], name)   # raises if strict loading fails
            self.assertFalse(ns["model"].training)

    def test_value_warnings(self):
        rc, j, _ = check(self, "values-bninit.pt")
        self.assertIn("bn_init", [w["code"] for w in j["warnings"]])
        rc, j, _ = check(self, "values-a.pt")
        codes = [w["code"] for w in j["warnings"]]
        self.assertNotIn("bn_init", codes)
        self.assertNotIn("nan", codes)
        rc, j, _ = check(self, "values-nonfinite.pt")
        msgs = {w["code"]: w["message"] for w in j["warnings"]}
        self.assertIn("'fc.weight'", msgs.get("nan", ""))
        self.assertIn("'layer2.0.conv1.weight'", msgs.get("inf", ""))
        rc, j, _ = check(self, "values-half.pt")
        self.assertIn("dtype", [w["code"] for w in j["warnings"]])
        self.assertTrue(j["ok"])

    def test_errors(self):
        rc, out, err = L.run_ckpt(["check", os.path.join(FIX, "values-a.pt"), "--arch", "vgg16"])
        self.assertEqual(rc, 2)
        rc, out, err = L.run_ckpt(["check", os.path.join(FIX, "values-a.pt"),
                                   "--num-classes", "0"])
        self.assertEqual(rc, 2)
        rc, out, err = L.run_ckpt(["check", os.path.join(FIX, "does-not-exist.pt")])
        L.check_clean_error(self, rc, out, err, os.path.join(FIX, "does-not-exist.pt"))
        # a Net checkpoint without --against matches no ResNet
        p = os.path.join(FIX, "net-ok.pt")
        rc, out, err = L.run_ckpt(["check", p, "--json"])
        L.check_clean_error(self, rc, out, err, p)


class Diff(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        L.require_bin()
        data()

    def run_diff(self, a, b, *args, codes=(0, 1)):
        rc, out, err = L.run_ckpt(["diff", os.path.join(FIX, a), os.path.join(FIX, b)] +
                                  list(args) + ["--json"], timeout=TIMEOUT)
        L.check_no_crash(self, rc, out, err, "ckpt diff %s %s" % (a, b))
        self.assertIn(rc, codes, err)
        return rc, json.loads(out)

    def compare(self, j, exp, atol=None):
        got = collections.OrderedDict((t["key"], t) for t in j["tensors"])
        self.assertEqual(list(got), list(exp))
        for k, e in exp.items():
            g = got[k]
            self.assertEqual(g["status"], e["status"], k)
            if "max_abs" in e and e["status"] in ("same", "different", "dtype"):
                self.assertAlmostEqual(g["max_abs"], e["max_abs"], delta=1e-12, msg=k)
                if e["differing"] is not None:
                    self.assertEqual(g["differing"], e["differing"], k)

    def test_training_vs_clean(self):
        rc, j = self.run_diff("values-train.pt", "values-a.pt")
        self.assertEqual(rc, 0)
        self.assertTrue(j["match"])
        self.assertEqual(j["a"]["state_dict_path"], ["model"])
        self.assertEqual(j["a"]["prefix"], "module.")
        self.compare(j, data()["extra"]["diff_same"])

    def test_differences(self):
        rc, j = self.run_diff("values-a.pt", "values-b.pt")
        self.assertEqual(rc, 1)
        self.assertFalse(j["match"])
        self.compare(j, data()["extra"]["diff_ab"])
        self.assertEqual(j["counts"]["only_a"], 1)
        self.assertEqual(j["counts"]["only_b"], 1)
        self.assertEqual(j["counts"]["shape"], 1)
        self.assertEqual(j["counts"]["different"], 2)
        # within atol: the two small changes pass, fc.bias (0.25 and more) does not
        rc, j = self.run_diff("values-a.pt", "values-b.pt", "--atol", "0.01")
        st = {t["key"]: t for t in j["tensors"]}
        self.assertTrue(st["layer1.0.conv1.weight"]["match"])
        self.assertFalse(st["fc.bias"]["match"])
        self.assertEqual(rc, 1)

    def test_dtype(self):
        rc, j = self.run_diff("values-a.pt", "values-half.pt")
        self.assertEqual(rc, 1)
        self.compare(j, data()["extra"]["diff_half"])
        rc, j = self.run_diff("values-a.pt", "values-half.pt", "--atol", "1e-3")
        self.assertEqual(rc, 0, [t for t in j["tensors"] if not t["match"]][:3])

    def test_atol_boundary(self):
        """--atol is torch.allclose(a, b, rtol=0, atol=ATOL): a difference equal to atol
        passes. Exact binary differences (0.5, 2^-10) leave no rounding to hide behind."""
        import torch
        a = {"w": torch.tensor([1.0, 2.0, -3.0], dtype=torch.float64),
             "h": torch.tensor([1.0, 0.5], dtype=torch.float16)}
        b = {"w": torch.tensor([1.5, 2.0, -3.25], dtype=torch.float64),
             "h": torch.tensor([1.0 + 2 ** -10, 0.5], dtype=torch.float16)}
        with tempfile.TemporaryDirectory() as d:
            pa, pb = os.path.join(d, "a.pt"), os.path.join(d, "b.pt")
            torch.save(a, pa)
            torch.save(b, pb)
            for atol in ["0.5", "0.4999", "0.0009765625", "0.0009765"]:
                rc, out, err = L.run_ckpt(["diff", pa, pb, "--atol", atol, "--json"])
                self.assertIn(rc, (0, 1), err)
                got = {t["key"]: t["match"] for t in json.loads(out)["tensors"]}
                want = {k: torch.allclose(a[k].double(), b[k].double(), rtol=0,
                                          atol=float(atol)) for k in a}
                self.assertEqual(got, want, atol)
                self.assertEqual(rc, 0 if all(want.values()) else 1, atol)

    def test_usage(self):
        rc, out, err = L.run_ckpt(["diff", os.path.join(FIX, "values-a.pt")])
        self.assertEqual(rc, 2)
        rc, out, err = L.run_ckpt(["diff", os.path.join(FIX, "values-a.pt"),
                                   os.path.join(FIX, "values-b.pt"), "--atol", "-1"])
        self.assertEqual(rc, 2)
        rc, out, err = L.run_ckpt(["diff", "--help"])
        self.assertEqual(rc, 0)
        self.assertIn("--atol", out)


if __name__ == "__main__":
    L.main("test_check")
