#!/usr/bin/python3
"""
test_family.py - the architecture seam, proved with a second family: torchvision's vgg11.

VGG is a check-only family (src/vgg.c: one file and one line in src/family.h). For state dicts
made by torch 1.13 from `torchvision.models.vgg11(num_classes=N)`, as saved and after one
mutation (a key deleted, a key added, a shape changed, another class count), `ckpt check`
must give PyTorch's own verdict and RuntimeError text, `--arch auto` must recognise vgg11 and
its class count, and `ckpt run` must refuse it with exit 2 (no inference for the family).

Tensors are stride-0 views of one-element storages: load_state_dict judges names and shapes,
so the files stay a few kilobytes while every shape is vgg11's.
"""

import collections
import json
import os
import re
import shutil
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ckpt_testlib as L  # noqa: E402

TIMEOUT = 60.0
NUM_CLASSES = 37


def fast_init():
    """vgg11 without random initialisation (the verdict does not depend on values)."""
    import torch
    for name in ("kaiming_normal_", "kaiming_uniform_", "uniform_", "normal_", "constant_"):
        setattr(torch.nn.init, name, lambda t, *a, **k: t)


def tiny_sd(sd):
    """sd with every tensor a broadcast view of one zero, _metadata kept."""
    import torch
    out = collections.OrderedDict()
    for k, v in sd.items():
        out[k] = torch.zeros((), dtype=v.dtype) if v.dim() == 0 else \
            torch.zeros(1, dtype=v.dtype).expand(*v.shape)
    out._metadata = sd._metadata
    return out


def torch_verdict(model, path):
    """What model.load_state_dict(torch.load(path), strict=True) raises, or None."""
    import torch
    sd = torch.load(path)
    try:
        model.load_state_dict(sd, strict=True)
    except RuntimeError as e:
        return str(e)
    return None


def check(tc, path, *args, codes=(0, 1)):
    rc, out, err = L.run_ckpt(["check", path] + list(args) + ["--json"], timeout=TIMEOUT)
    L.check_no_crash(tc, rc, out, err, "ckpt check %s %s" % (path, " ".join(args)))
    tc.assertIn(rc, codes, "ckpt check %s %s: exit %r: %s" % (path, args, rc, err[:1000]))
    return rc, json.loads(out) if rc != 2 else None, err


class Vgg(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        L.require_bin()
        import torch
        import torchvision
        fast_init()
        cls.tmp = tempfile.mkdtemp(prefix="ckpt-family-")
        cls.models = {nc: torchvision.models.vgg11(num_classes=nc) for nc in (NUM_CLASSES, 1000)}
        base = tiny_sd(cls.models[NUM_CLASSES].state_dict())
        cls.keys = list(base)

        def mutated(change):
            sd = collections.OrderedDict(base)
            sd._metadata = base._metadata
            change(sd)
            return sd

        def wrong_shape(sd):
            sd["features.3.weight"] = torch.zeros(1).expand(128, 32, 3, 3)

        cls.files = {}
        cases = {
            "ok": base,
            "missing": mutated(lambda sd: sd.pop("features.3.bias")),
            "unexpected": mutated(lambda sd: sd.__setitem__("features.99.weight",
                                                            torch.zeros(1).expand(4, 4))),
            "shape": mutated(wrong_shape),
            "wrapped": collections.OrderedDict(("module." + k, v) for k, v in base.items()),
        }
        for name, sd in cases.items():
            path = os.path.join(cls.tmp, "vgg11-%s.pt" % name)
            torch.save(sd, path)
            cls.files[name] = path

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def assert_torch_verdict(self, j, model, path):
        text = torch_verdict(model, path)
        self.assertEqual(j["ok"], text is None, path)
        self.assertEqual(j["error_text"], text, path)
        if text:
            missing = re.findall(r'"([^"]*)"', text.split("Missing key(s) in state_dict: ")[1]
                                 .split("\n")[0]) if "Missing key(s)" in text else []
            self.assertEqual(j["missing"], missing)

    def test_named_arch_matches_torch(self):
        for name in ("ok", "missing", "unexpected", "shape"):
            path = self.files[name]
            rc, j, _ = check(self, path, "--arch", "vgg11", "--num-classes", str(NUM_CLASSES))
            self.assertEqual(j["arch"], "vgg11")
            self.assertEqual(rc, 0 if name == "ok" else 1, name)
            self.assert_torch_verdict(j, self.models[NUM_CLASSES], path)
        # torchvision's default class count: the head's size mismatch, in torch's words
        rc, j, _ = check(self, self.files["ok"], "--arch", "vgg11")
        self.assertEqual(j["num_classes"], 1000)
        self.assert_torch_verdict(j, self.models[1000], self.files["ok"])
        self.assertEqual([m["key"] for m in j["size_mismatch"]],
                         ["classifier.6.weight", "classifier.6.bias"])

    def test_auto_recognises_vgg11(self):
        for name in ("ok", "missing", "shape"):
            rc, j, _ = check(self, self.files[name])
            self.assertEqual((j["arch"], j["num_classes"]), ("vgg11", NUM_CLASSES), name)
            self.assert_torch_verdict(j, self.models[NUM_CLASSES], self.files[name])
        rc, j, _ = check(self, self.files["ok"])
        self.assertEqual(j["tensors"], len(self.keys))
        self.assertIn("torchvision.models.vgg11(num_classes=%d)" % NUM_CLASSES, j["python"])
        # a DataParallel prefix is found for this family too
        rc, j, _ = check(self, self.files["wrapped"])
        self.assertEqual((j["arch"], j["prefix"], j["ok"]), ("vgg11", "module.", True))

    def test_python_lines_load(self):
        """The Python ckpt prints loads the file strictly into torch's vgg11."""
        rc, j, _ = check(self, self.files["wrapped"])
        ns = L.run_python(self, j["python"], "vgg11-wrapped")
        self.assertFalse(ns["model"].training)
        self.assertEqual(ns["model"].classifier[6].out_features, NUM_CLASSES)

    def test_resnet_is_not_vgg(self):
        """A ResNet dict still goes to the ResNet family, and --arch vgg11 says why not."""
        import torch
        import torchvision
        path = os.path.join(self.tmp, "resnet18.pt")
        torch.save(tiny_sd(torchvision.models.resnet18(num_classes=5).state_dict()), path)
        rc, j, _ = check(self, path)
        self.assertEqual((j["arch"], j["num_classes"], j["ok"]), ("resnet18", 5, True))
        rc, j, _ = check(self, path, "--arch", "vgg11", "--num-classes", "5")
        self.assert_torch_verdict(j, torchvision.models.vgg11(num_classes=5), path)

    def test_run_refuses(self):
        img = os.path.join(self.tmp, "img.png")
        import numpy as np
        from PIL import Image
        Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(img)
        rc, out, err = L.run_ckpt(["run", self.files["ok"], img], timeout=TIMEOUT)
        L.check_clean_error(self, rc, out, err, self.files["ok"])
        self.assertIn("no inference for the vgg family", err)


if __name__ == "__main__":
    unittest.main(verbosity=2)
