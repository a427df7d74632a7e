#!/usr/bin/python3
"""
test_schemes.py - other names for torchvision's ResNet tensors (issue 8): the Hugging Face
transformers ResNet, nn.Sequential(*list(model.children())[:-1]) feature extractors and
Detectron2's convert-torchvision-to-d2.py output. Each file is made here from torch alone:

- Hugging Face: Debian has no transformers package, so the test rebuilds the module tree of
  transformers' models/resnet/modeling_resnet.py (ResNetConvLayer = convolution +
  normalization; ResNetShortCut; ResNetBottleNeckLayer / ResNetBasicLayer = shortcut + layer;
  ResNetStage.layers; ResNetEncoder.stages; ResNetModel = embedder + encoder;
  ResNetForImageClassification = resnet + classifier(Flatten, Linear)) as plain torch modules,
  takes *their* state_dict() keys and order, and fills them from a torchvision state dict by
  the correspondence derived from that file (checked: same key set, same shapes). Saved with
  torch.save (.bin) and as .safetensors (written by hand: no safetensors package either).
- Sequential: a real nn.Sequential over a real torchvision ResNet, its real state_dict().
- Detectron2: the renaming rules of tools/convert-torchvision-to-d2.py re-implemented here,
  over a torchvision state dict, values as numpy arrays, pickled with pickle.dump as the script
  does.

For each: `ckpt check --json` names the scheme and maps every model key to the file key it
comes from; the Python ckpt prints is executed in torch 1.13 and every tensor it loads equals
the intended one; `ckpt extract` writes torchvision's names, which torch loads with
weights_only=True.
"""

import collections
import json
import os
import pickle
import re
import shutil
import struct
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ckpt_testlib as L  # noqa: E402

TIMEOUT = 120.0


def fast_init():
    import torch
    for name in ("kaiming_normal_", "kaiming_uniform_", "uniform_", "normal_", "constant_"):
        setattr(torch.nn.init, name, lambda t, *a, **k: t)


def marked(sd, start, dense=False):
    """sd with tensor i holding start + i (+ a ramp when dense): tensors told apart."""
    import torch
    out = collections.OrderedDict()
    for i, (k, v) in enumerate(sd.items()):
        if v.dim() == 0:
            out[k] = torch.tensor(start + i, dtype=v.dtype)
        elif dense:
            ramp = torch.arange(v.numel(), dtype=torch.float64).reshape(v.shape) % 7
            out[k] = (ramp + start + i).to(v.dtype)
        else:
            out[k] = torch.full((1,), float(start + i), dtype=v.dtype).expand(*v.shape)
    return out


# ---- Hugging Face: modeling_resnet.py's module tree, as plain torch modules ----------------

def hf_model(arch, num_classes=1000):
    """ResNetForImageClassification's modules for torchvision's `arch` (no forward)."""
    import torch.nn as nn
    bottleneck = arch in ("resnet50", "resnet101", "resnet152")
    depths = {"resnet18": [2, 2, 2, 2], "resnet34": [3, 4, 6, 3], "resnet50": [3, 4, 6, 3],
              "resnet101": [3, 4, 23, 3]}[arch]
    hidden = [256, 512, 1024, 2048] if bottleneck else [64, 128, 256, 512]

    class ConvLayer(nn.Module):
        def __init__(self, i, o, k=3, s=1):
            super().__init__()
            self.convolution = nn.Conv2d(i, o, k, s, k // 2, bias=False)
            self.normalization = nn.BatchNorm2d(o)
            self.activation = nn.ReLU()

    class ShortCut(nn.Module):
        def __init__(self, i, o, s=2):
            super().__init__()
            self.convolution = nn.Conv2d(i, o, 1, s, bias=False)
            self.normalization = nn.BatchNorm2d(o)

    class Layer(nn.Module):
        def __init__(self, i, o, s=1):
            super().__init__()
            self.shortcut = ShortCut(i, o, s) if i != o or s != 1 else nn.Identity()
            if bottleneck:
                r = o // 4
                self.layer = nn.Sequential(ConvLayer(i, r, 1), ConvLayer(r, r, s=s),
                                           ConvLayer(r, o, 1))
            else:
                self.layer = nn.Sequential(ConvLayer(i, o, s=s), ConvLayer(o, o))
            self.activation = nn.ReLU()

    class Stage(nn.Module):
        def __init__(self, i, o, s, d):
            super().__init__()
            self.layers = nn.Sequential(Layer(i, o, s), *[Layer(o, o) for _ in range(d - 1)])

    class Encoder(nn.Module):
        def __init__(self):
            super().__init__()
            self.stages = nn.ModuleList([Stage(64, hidden[0], 1, depths[0])])
            for (i, o), d in zip(zip(hidden, hidden[1:]), depths[1:]):
                self.stages.append(Stage(i, o, 2, d))

    class Embeddings(nn.Module):
        def __init__(self):
            super().__init__()
            self.embedder = ConvLayer(3, 64, 7, 2)
            self.pooler = nn.MaxPool2d(3, 2, 1)

    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.embedder = Embeddings()
            self.encoder = Encoder()
            self.pooler = nn.AdaptiveAvgPool2d((1, 1))

    class ForImageClassification(nn.Module):
        def __init__(self):
            super().__init__()
            self.resnet = Model()
            self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(hidden[-1], num_classes))

    return ForImageClassification()


def hf_name(tv):
    """The transformers name of a torchvision ResNet key (from modeling_resnet.py)."""
    m = re.fullmatch(r"(conv1|bn1)\.(\w+)", tv)
    if m:
        kind = "convolution" if m[1] == "conv1" else "normalization"
        return "resnet.embedder.embedder.%s.%s" % (kind, m[2])
    m = re.fullmatch(r"fc\.(\w+)", tv)
    if m:
        return "classifier.1." + m[1]
    m = re.fullmatch(r"layer(\d)\.(\d+)\.(conv|bn)(\d)\.(\w+)", tv)
    if m:
        kind = "convolution" if m[3] == "conv" else "normalization"
        return "resnet.encoder.stages.%d.layers.%s.layer.%d.%s.%s" % (
            int(m[1]) - 1, m[2], int(m[4]) - 1, kind, m[5])
    m = re.fullmatch(r"layer(\d)\.(\d+)\.downsample\.([01])\.(\w+)", tv)
    kind = "convolution" if m[3] == "0" else "normalization"
    return "resnet.encoder.stages.%d.layers.%s.shortcut.%s.%s" % (int(m[1]) - 1, m[2], kind, m[4])


# ---- Detectron2: tools/convert-torchvision-to-d2.py's rules ---------------------------------

def d2_name(k):
    if "layer" not in k:
        k = "stem." + k
    for t in [1, 2, 3, 4]:
        k = k.replace("layer{}".format(t), "res{}".format(t + 1))
    for t in [1, 2, 3]:
        k = k.replace("bn{}".format(t), "conv{}.norm".format(t))
    k = k.replace("downsample.0", "shortcut")
    k = k.replace("downsample.1", "shortcut.norm")
    return k


def write_safetensors(path, sd):
    import torch
    names = {torch.float32: "F32", torch.int64: "I64"}
    header, blobs, at = {}, [], 0
    for k, v in sd.items():
        b = v.contiguous().numpy().tobytes()
        header[k] = {"dtype": names[v.dtype], "shape": list(v.shape), "data_offsets": [at, at + len(b)]}
        blobs.append(b)
        at += len(b)
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))


def read_safetensors(path):
    """safetensors.torch.load_file for the printed Python where the package is missing
    (Debian 12 has none): the header's tensors, in the header's order."""
    import torch
    dtypes = {"F32": torch.float32, "I64": torch.int64}
    with open(path, "rb") as f:
        data = f.read()
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + n])
    out = collections.OrderedDict()
    for k, h in header.items():
        if k == "__metadata__":
            continue
        a, b = h["data_offsets"]
        buf = bytearray(data[8 + n + a:8 + n + b])
        out[k] = torch.frombuffer(buf, dtype=dtypes[h["dtype"]]).reshape(h["shape"]).clone()
    return out


def provide_safetensors():
    try:
        import safetensors.torch  # noqa: F401
    except ImportError:
        import types
        pkg, mod = types.ModuleType("safetensors"), types.ModuleType("safetensors.torch")
        mod.load_file = read_safetensors
        pkg.torch = mod
        sys.modules["safetensors"], sys.modules["safetensors.torch"] = pkg, mod


class Schemes(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        L.require_bin()
        fast_init()
        cls.tmp = tempfile.mkdtemp(prefix="ckpt-schemes-")

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def check(self, path, codes=(0,)):
        rc, out, err = L.run_ckpt(["check", path, "--json"], timeout=TIMEOUT)
        L.check_no_crash(self, rc, out, err, "ckpt check " + path)
        self.assertIn(rc, codes, err)
        return json.loads(out)

    def run_python(self, j, path, backbone=False):
        """Execute ckpt's printed Python next to the file; returns its `sd` and `model`."""
        import torch
        ns = {}
        try:
            L.run_python(self, j["python"], "ckpt-python", ns, base=os.path.dirname(path))
        except RuntimeError as e:
            if not backbone:
                raise
            self.assertIn("Missing key(s)", str(e))
        sd, model = ns["sd"], ns["model"]
        if backbone:   # fc alone is missing: what a backbone is
            res = model.load_state_dict(sd, strict=False)
            self.assertEqual(sorted(res.missing_keys), ["fc.bias", "fc.weight"])
            self.assertEqual(res.unexpected_keys, [])
        return sd, model

    def assert_same(self, got, intended, keys):
        import torch
        self.assertEqual(sorted(got), sorted(keys))
        for k in keys:
            a, b = got[k], intended[k]
            self.assertEqual(a.dtype, b.dtype, k)
            self.assertTrue(torch.equal(a, b), k)

    def extract(self, path, intended, backbone=False):
        import torch
        import torchvision
        out = path + ".out.pth"
        rc, o, err = L.run_ckpt(["extract", path, "-o", out, "--force"] +
                                (["--no-check"] if backbone else []), timeout=TIMEOUT)
        self.assertEqual(rc, 0, err)
        sd = torch.load(out, weights_only=True)
        self.assert_same(sd, intended, list(intended))
        return sd

    def check_scheme(self, path, naming, file_of, intended, arch, backbone=False):
        """check --json: the naming, the key map (file_of: torchvision key -> file key) in the
        model's order; the printed Python; extract."""
        import torchvision
        j = self.check(path, (1,) if backbone else (0,))
        self.assertEqual(j["naming"], naming)
        self.assertIn("renamed", [w["code"] for w in j["warnings"]])
        self.assertEqual(j["arch"], arch)
        model_keys = [k for k in getattr(torchvision.models, arch)().state_dict()
                      if k in intended]
        self.assertEqual(j["key_map"], [[k, file_of[k]] for k in model_keys])
        self.assertEqual(j["left_out"], [])
        sd, model = self.run_python(j, path, backbone)
        self.assert_same(sd, intended, list(intended))
        loaded = model.state_dict()
        self.assert_same({k: loaded[k] for k in intended}, intended, list(intended))
        self.extract(path, intended, backbone)

    # ---- Hugging Face ----

    def hf_file(self, arch, start):
        import torch
        import torchvision
        tv = marked(getattr(torchvision.models, arch)().state_dict(), start)
        hf = hf_model(arch).state_dict()
        names = {hf_name(k): k for k in tv}
        self.assertEqual(set(names), set(hf))       # the correspondence covers both sides
        d = collections.OrderedDict()
        for k, v in hf.items():                     # transformers' own order
            self.assertEqual(tuple(v.shape), tuple(tv[names[k]].shape), k)
            d[k] = tv[names[k]]
        return tv, d, {t: h for h, t in names.items()}

    def test_huggingface_bin(self):
        import torch
        for arch, start in (("resnet50", 1), ("resnet18", 5000)):
            tv, d, file_of = self.hf_file(arch, start)
            path = os.path.join(self.tmp, "hf-%s.bin" % arch)
            torch.save(d, path)
            self.check_scheme(path, "huggingface", file_of, tv, arch)

    def test_huggingface_in_snapshot(self):
        """Next to a Python float (1.13's weights_only refuses it) the Python goes through
        ckpt extract, which writes the keys already renamed."""
        import torch
        tv, d, file_of = self.hf_file("resnet18", 11)
        path = os.path.join(self.tmp, "hf-snapshot.pth")
        torch.save({"model": d, "epoch": 3, "best_acc": 0.5}, path)
        j = self.check(path)
        self.assertIn("#   ckpt extract ", j["python"])
        self.assertNotIn("torchvision_key", j["python"])
        self.check_scheme(path, "huggingface", file_of, tv, "resnet18")

    def test_huggingface_safetensors(self):
        provide_safetensors()
        tv, d, file_of = self.hf_file("resnet18", 7)
        path = os.path.join(self.tmp, "model.safetensors")
        write_safetensors(path, collections.OrderedDict((k, v.contiguous()) for k, v in d.items()))
        self.check_scheme(path, "huggingface", file_of, tv, "resnet18")

    # ---- Sequential ----

    def test_sequential_children(self):
        import torch
        import torchvision
        for arch in ("resnet18", "resnet50"):
            model = getattr(torchvision.models, arch)()
            model.load_state_dict(marked(model.state_dict(), 3))
            seq = torch.nn.Sequential(*list(model.children())[:-1])
            sd = seq.state_dict()
            self.assertIn("4.0.conv1.weight", sd)
            # the same keys in the same order, each a stride-0 view: a small file
            d = collections.OrderedDict(
                (k, v.reshape(-1)[:1].clone().expand(*v.shape) if v.dim() else v.clone())
                for k, v in sd.items())
            path = os.path.join(self.tmp, "seq-%s.pth" % arch)
            torch.save(d, path)
            tv = model.state_dict()
            children = dict(enumerate(n for n, _ in model.named_children()))
            file_of = {}
            for k in d:
                i, rest = k.split(".", 1)
                file_of[children[int(i)] + "." + rest] = k
            intended = collections.OrderedDict((k, tv[k]) for k in file_of)
            self.check_scheme(path, "sequential", file_of, intended, arch, backbone=True)

    # ---- Detectron2 ----

    def test_detectron2(self):
        import torchvision
        model = torchvision.models.resnet18()
        tv = marked(model.state_dict(), 11, dense=True)
        newmodel = {}
        for k, v in tv.items():
            newmodel[d2_name(k)] = v.detach().numpy()
        res = {"model": newmodel, "__author__": "torchvision", "matching_heuristics": True}
        path = os.path.join(self.tmp, "r18.pkl")
        with open(path, "wb") as f:
            pickle.dump(res, f)
        self.assertIn("res2.0.conv1.norm.weight", newmodel)
        self.assertIn("res3.0.shortcut.norm.running_var", newmodel)
        self.assertIn("stem.fc.weight", newmodel)
        file_of = {k: d2_name(k) for k in tv}
        self.check_scheme(path, "detectron2", file_of, tv, "resnet18")
        # the numpy arrays themselves, bit for bit
        rc, out, err = L.run_ckpt(["tensors", path, "--json"], timeout=TIMEOUT)
        self.assertEqual(rc, 0, err)

    def test_plain_names_untouched(self):
        """A torchvision dict is no scheme's: naming null, keys as they are."""
        import torch
        import torchvision
        tv = marked(torchvision.models.resnet18().state_dict(), 1)
        path = os.path.join(self.tmp, "plain.pth")
        torch.save(tv, path)
        j = self.check(path)
        self.assertIsNone(j["naming"])
        self.assertNotIn("renamed", [w["code"] for w in j["warnings"]])
        self.assertEqual(j["key_map"], [[k, k] for k in tv])

    def test_half_renamed_is_no_scheme(self):
        """A dict whose keys mostly are not of a scheme keeps its own names."""
        import torch
        d = collections.OrderedDict([("0.weight", torch.zeros(3)), ("a.weight", torch.zeros(3)),
                                     ("b.weight", torch.zeros(3))])
        path = os.path.join(self.tmp, "mixed.pth")
        torch.save(d, path)
        rc, out, err = L.run_ckpt(["check", path, "--json"], timeout=TIMEOUT)
        self.assertIn(rc, (1, 2), err)
        if rc == 1:
            self.assertIsNone(json.loads(out)["naming"])


if __name__ == "__main__":
    unittest.main()
