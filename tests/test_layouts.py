#!/usr/bin/python3
"""
test_layouts.py - issue 8: published self-supervised and framework layouts, several networks in
one dict, backbones without a classifier. Each fixture imitates a project's public save code
with a small torchvision ResNet of random weights; ckpt's printed Python is executed in torch
and every tensor it loads is compared with the intended network's.
"""

import collections
import os
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ckpt_testlib as L  # noqa: E402

TIMEOUT = 120.0


net = L.random_net


def mlp_head(m, hidden=64, dim=16):
    import torch.nn as nn
    f = m.fc.in_features
    m.fc = nn.Sequential(nn.Linear(f, hidden), nn.ReLU(), nn.Linear(hidden, dim))
    return m


def under(prefix, sd):
    return collections.OrderedDict((prefix + k, v) for k, v in sd.items())


class Layouts(L.SavingCase):
    def check_loads(self, path, want, backbone):
        """ckpt's Python loads exactly want's tensors (all but fc for a backbone)."""
        j = L.run_json(self, ["check", "--json", path], ok_codes=(0, 1))
        code = j["python"]
        ns = L.run_python(self, code, path)
        got = ns["model"].state_dict()
        for k, v in want.items():
            if backbone and k.startswith("fc."):
                continue
            self.assertIn(k, got)
            self.assertTrue(got[k].equal(v), "%s: %s differs" % (path, k))
        if backbone:
            self.assertIn("strict=False", code)
            self.assertIn("assert set(missing) == {'fc.weight', 'fc.bias'}", code)
            self.check_features(path, j)
        else:
            self.assertIn("strict=True", code)
        self.check_extract(path, want, j, backbone)
        return j

    def check_features(self, path, j):
        """run --features works on the backbone check found (the numbers themselves are
        compared with torchvision's in test_run_features.py), and run refuses to classify."""
        import numpy as np
        x = os.path.join(self.tmp.name, "x.npy")
        if not os.path.exists(x):
            np.save(x, np.random.default_rng(0).random((1, 3, 32, 32), dtype=np.float32))
        doc = L.run_json(self, ["run", path, "--input", x, "--features", "--json"])
        self.assertEqual(doc["model"]["num_classes"], 0, path)
        self.assertEqual(doc["model"]["prefix"], j["prefix"], path)
        self.assertEqual(len(doc["results"][0]["features"]),
                         2048 if doc["model"]["arch"] in ("resnet50", "resnet101", "resnet152",
                                                          "resnext50_32x4d", "resnext101_32x8d",
                                                          "wide_resnet50_2", "wide_resnet101_2")
                         else 512, path)
        rc, out, err = L.run_ckpt(["run", path, "--input", x], timeout=TIMEOUT)
        self.assertEqual(rc, 2, out + err)
        self.assertIn("--features", err)

    def check_extract(self, path, want, j, backbone):
        """ckpt extract writes exactly the intended weights: a backbone alone (strict=False
        misses exactly fc), a whole network loading with strict=True."""
        import torch
        import torchvision
        out = path + ".extracted.pt"
        rc, _, err = L.run_ckpt(["extract", path, "-o", out, "--force"], timeout=TIMEOUT)
        self.assertEqual(rc, 0, err)
        sd = torch.load(out, map_location="cpu", weights_only=True)
        arch = getattr(torchvision.models, j["arch"])
        m = arch() if backbone else arch(num_classes=j["num_classes"])
        missing, unexpected = m.load_state_dict(sd, strict=not backbone)
        self.assertEqual(set(missing), {"fc.weight", "fc.bias"} if backbone else set())
        self.assertEqual(unexpected, [])
        for k, v in want.items():
            if not (backbone and k.startswith("fc.")):
                self.assertTrue(sd[k].equal(v), "%s: %s" % (path, k))

    def test_moco_v2(self):
        """main_moco.py: encoder_q and encoder_k with MLP fc, a queue; the query encoder."""
        import torch
        q, k = mlp_head(net(seed=1)), mlp_head(net(seed=2))
        sd = collections.OrderedDict()
        sd.update(under("module.encoder_q.", q.state_dict()))
        sd.update(under("module.encoder_k.", k.state_dict()))
        sd["module.queue"] = torch.randn(16, 32)
        sd["module.queue_ptr"] = torch.zeros(1, dtype=torch.long)
        path = self.save("moco_v2.pth.tar", {"epoch": 200, "arch": "resnet18",
                                              "state_dict": sd, "optimizer": {}})
        j = self.check_loads(path, q.state_dict(), backbone=True)
        self.assertEqual(j["prefix"], "module.encoder_q.")

    def test_moco_v3(self):
        """builder.py: base_encoder over momentum_encoder, a predictor next to them."""
        q, k = mlp_head(net(seed=3)), mlp_head(net(seed=4))
        sd = collections.OrderedDict()
        sd.update(under("module.base_encoder.", q.state_dict()))
        sd.update(under("module.momentum_encoder.", k.state_dict()))
        sd.update(under("module.predictor.", mlp_head(net(seed=5)).fc.state_dict()))
        path = self.save("moco_v3.pth.tar", {"epoch": 1, "arch": "resnet18",
                                              "state_dict": sd, "optimizer": {}})
        j = self.check_loads(path, q.state_dict(), backbone=True)
        self.assertEqual(j["prefix"], "module.base_encoder.")

    def test_dino_full(self):
        """main_dino.py: teacher and student, module.backbone.* + module.head.*; the teacher."""
        t, s = net(seed=6), net(seed=7)
        ts, ss = t.state_dict(), s.state_dict()
        for d in (ts, ss):
            del d["fc.weight"], d["fc.bias"]
        head = mlp_head(net(seed=8)).fc.state_dict()
        teacher = under("module.backbone.", ts)
        teacher.update(under("module.head.", head))
        student = under("module.backbone.", ss)
        student.update(under("module.head.", head))
        path = self.save("dino.pth", {"student": student, "teacher": teacher, "epoch": 3,
                                       "optimizer": {}})
        j = self.check_loads(path, t.state_dict(), backbone=True)
        self.assertIn("ckpt['teacher']", j["python"])

    def test_dino_released_backbone(self):
        """dino_resnet50_pretrain.pth: a resnet50 state dict without fc."""
        m = net("resnet50", seed=9)
        sd = m.state_dict()
        del sd["fc.weight"], sd["fc.bias"]
        path = self.save("dino_resnet50_pretrain.pth", sd)
        self.check_loads(path, m.state_dict(), backbone=True)

    def test_swav(self):
        """SwAV: module. + projection_head.* and prototypes.weight next to the backbone."""
        import torch
        m = net(seed=10)
        sd = m.state_dict()
        del sd["fc.weight"], sd["fc.bias"]
        sd = under("module.", sd)
        sd["module.projection_head.0.weight"] = torch.randn(64, 512)
        sd["module.projection_head.0.bias"] = torch.randn(64)
        sd["module.prototypes.weight"] = torch.randn(30, 64)
        path = self.save("swav.pth", sd)
        j = self.check_loads(path, m.state_dict(), backbone=True)
        self.assertEqual((j["prefix"], j["verdict_kind"]), ("module.", "backbone"))
        # the heads beside the network are named, and left out of the load
        self.assertIn("'projection_head', 'prototypes'", j["python"])
        # one module beside it: a one-name tuple in the Python, which must still run
        del sd["module.projection_head.0.weight"], sd["module.projection_head.0.bias"]
        path = self.save("swav1.pth", sd)
        j = self.check_loads(path, m.state_dict(), backbone=True)
        self.assertIn("not in ('prototypes',)", j["python"])

    def test_detection_backbone(self):
        """torchvision detection: backbone.body.* next to FPN, RPN and ROI heads."""
        import torch
        m = net(seed=11)
        sd = m.state_dict()
        del sd["fc.weight"], sd["fc.bias"]
        sd = under("backbone.body.", sd)
        sd["backbone.fpn.inner_blocks.0.0.weight"] = torch.randn(32, 64, 1, 1)
        sd["rpn.head.conv.0.0.weight"] = torch.randn(32, 32, 3, 3)
        sd["roi_heads.box_predictor.cls_score.weight"] = torch.randn(91, 64)
        path = self.save("fasterrcnn.pth", sd)
        j = self.check_loads(path, m.state_dict(), backbone=True)
        self.assertEqual(j["prefix"], "backbone.body.")
        rc, _, err = L.run_ckpt(["run", path, "--input", path], timeout=TIMEOUT)
        self.assertEqual(rc, 2, err)
        self.assertIn("a backbone without its classifier", err)

    def test_solo_learn(self):
        """solo-learn: backbone.* over momentum_backbone.*, classifier, projector."""
        import torch
        b, mb = net(seed=12), net(seed=13)
        bs, ms = b.state_dict(), mb.state_dict()
        for d in (bs, ms):
            del d["fc.weight"], d["fc.bias"]
        sd = under("backbone.", bs)
        sd["classifier.weight"] = torch.randn(10, 512)
        sd["classifier.bias"] = torch.randn(10)
        sd["projector.0.weight"] = torch.randn(64, 512)
        sd.update(under("momentum_backbone.", ms))
        path = self.save("solo.ckpt", {"epoch": 1, "global_step": 5, "state_dict": sd,
                                        "callbacks": {"ModelCheckpoint": {
                                            "best_model_score": torch.tensor(0.5)}}})
        # its online linear probe, classifier.*, is the classifier: loaded as fc
        want = collections.OrderedDict(bs)
        want["fc.weight"], want["fc.bias"] = sd["classifier.weight"], sd["classifier.bias"]
        j = self.check_loads(path, want, backbone=False)
        self.assertEqual(j["prefix"], "backbone.")
        self.assertEqual((j["num_classes"], j["verdict_kind"], j["ok"]), (10, "model", True))
        self.assertIn("renamed_head", [w["code"] for w in j["warnings"]])
        fc = {mk: fk for mk, fk in j["key_map"] if mk[:3] == "fc."}
        self.assertEqual(fc, {"fc.weight": "classifier.weight", "fc.bias": "classifier.bias"})

    def test_tiny_dict_never_wins_with_arch(self):
        """--arch does not prefer a one-entry score dict to a near-complete network."""
        import torch
        m = net(seed=14)
        sd = under("model.", m.state_dict())
        sd["criterion.weight"] = torch.randn(1000)
        path = self.save("lightning.ckpt", {"state_dict": sd, "callbacks": {
            "best_k_models": {"a.ckpt": torch.tensor(0.1)}}})
        for args in ([], ["--arch", "resnet18"]):
            j = L.run_json(self, ["check", "--json"] + args + [path], ok_codes=(0, 1))
            self.assertEqual(j["prefix"], "model.")
        self.check_loads(path, m.state_dict(), backbone=False)


YACS_CONFIG = """\
class CfgNode(dict):
    \"\"\"What yacs.config.CfgNode is to pickle: a dict subclass in a module of its own.\"\"\"
"""

WRITE_YACS_SNAPSHOT = """\
import sys
import torch
import torchvision
sys.path.insert(0, sys.argv[1])
from yacs.config import CfgNode
torch.manual_seed(40)
m = torchvision.models.resnet18()
with torch.no_grad():
    for t in m.state_dict().values():
        if t.is_floating_point():
            t.copy_(torch.randn_like(t))
opt = torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9)
cfg = CfgNode(MODEL=CfgNode(NAME="resnet18"), BASE_LR=0.1, EPOCHS=90)
torch.save({"model": m.state_dict(), "optimizer": opt.state_dict(), "epoch": 3,
            "config": cfg}, sys.argv[2])
torch.save(m.state_dict(), sys.argv[3])
"""


class PicklesMore(L.SavingCase):
    """Files 1.13's torch.load(weights_only=True) refuses: the printed Python goes through
    ckpt extract and runs, as printed, on torch 1.13 (no weights_only=False, no import of the
    file's classes)."""

    def loads(self, path, want, imports=(), backbone=False, args=()):
        """The Python names the extract command and the packages weights_only=False would
        import, and loads exactly want (all but fc for a backbone) through weights.pth."""
        j = L.run_json(self, ["check", "--json"] + list(args) + [path], ok_codes=(0, 1))
        code = j["python"]
        self.assertIn("#   ckpt extract ", code)
        self.assertIn("sd = torch.load('weights.pth', map_location='cpu', weights_only=True)",
                      code)
        run = [ln for ln in code.splitlines() if not ln.startswith("#")]
        self.assertNotIn("weights_only=False", "\n".join(run))
        for pkg in imports:
            self.assertRegex(code, r"would import [^\n]*\b%s\b" % pkg)
        ns = L.run_python(self, code, path)
        got = ns["model"].state_dict()
        for k, v in want.items():
            if backbone and k.startswith("fc."):
                continue
            self.assertTrue(got[k].equal(v), "%s: %s differs" % (path, k))
        self.assertFalse(ns["model"].training)
        return j

    def test_argparse_snapshot(self):
        """A training snapshot: optimizer, epoch, a Python float, an argparse.Namespace."""
        import argparse
        import torch
        m = net(seed=41)
        opt = torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9)
        for p in m.parameters():
            p.grad = torch.ones_like(p)
        opt.step()
        path = self.save("snapshot_argparse.pth", {
            "model": under("module.", m.state_dict()), "optimizer": opt.state_dict(),
            "epoch": 3, "max_accuracy": 76.1,
            "config": argparse.Namespace(arch="resnet18", lr=0.1, epochs=90)})
        j = self.loads(path, m.state_dict(), imports=("argparse",))
        self.assertIn("Python floats", j["python"])
        self.assertEqual(j["verdict_kind"], "model")

    def test_missing_module_snapshot(self):
        """A config of a class whose module this process cannot import (yacs)."""
        import importlib.util
        import subprocess
        import torch
        fake = os.path.join(self.tmp.name, "fake_site")
        os.makedirs(os.path.join(fake, "yacs"))
        open(os.path.join(fake, "yacs", "__init__.py"), "w").close()
        with open(os.path.join(fake, "yacs", "config.py"), "w") as f:
            f.write(YACS_CONFIG)
        path = os.path.join(self.tmp.name, "snapshot_yacs.pth")
        want_path = os.path.join(self.tmp.name, "snapshot_yacs_want.pth")
        p = subprocess.run([sys.executable, "-c", WRITE_YACS_SNAPSHOT, fake, path, want_path],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=TIMEOUT)
        self.assertEqual(p.returncode, 0, p.stderr.decode())
        want = torch.load(want_path, map_location="cpu", weights_only=True)
        if importlib.util.find_spec("yacs") is None:
            # what the old Python said fails here, before any weight is loaded
            with self.assertRaises(ModuleNotFoundError):
                torch.load(path, map_location="cpu", weights_only=False)
        j = self.loads(path, want, imports=("yacs",))
        self.assertIn("yacs.config.CfgNode", j["python"])

    def test_numpy_scalar(self):
        """max_accuracy a numpy.float64: numpy's globals, no Python float."""
        import numpy as np
        m = net(seed=42)
        path = self.save("snapshot_numpy.pth", {"model": m.state_dict(), "epoch": 3,
                                                "max_accuracy": np.float64(76.1)})
        j = self.loads(path, m.state_dict(), imports=("numpy",))
        self.assertNotIn("Python floats", j["python"])

    def test_python_set(self):
        """A set (builtins.set): 1.13's weights_only refuses it, 2.x's does not."""
        m = net(seed=43)
        path = self.save("snapshot_set.pth", {"model": m.state_dict(), "classes": {1, 2, 3}})
        self.loads(path, m.state_dict())

    def test_pickle_protocol_4(self):
        """pickle_protocol=4 (zip and legacy): 1.13's weights_only knows none of its opcodes."""
        import torch
        m = net(seed=47)
        for name, kw in (("p4.pth", {}), ("p4_legacy.pth",
                                          {"_use_new_zipfile_serialization": False})):
            path = os.path.join(self.tmp.name, name)
            torch.save(m.state_dict(), path, pickle_protocol=4, **kw)
            j = self.loads(path, m.state_dict())
            self.assertIn("protocol 4", j["python"])
        # protocol 2, torch's default, loads directly
        path = self.save("p2.pth", m.state_dict())
        j = L.run_json(self, ["check", "--json", path])
        self.assertNotIn("ckpt extract", j["python"])
        L.run_python(self, j["python"], path)

    def test_key_chosen(self):
        """--key and --strip-prefix given to check are given to extract: the same dict."""
        m, ema = net(seed=48), net(seed=49)
        path = self.save("ema_float.pth", {"model": under("module.", m.state_dict()),
                                           "model_ema": ema.state_dict(), "acc": 0.5})
        j = self.loads(path, ema.state_dict(), args=("--key", "model_ema"))
        self.assertIn("--key 'model_ema'", j["python"])
        j = self.loads(path, m.state_dict(), args=("--key", "model", "--strip-prefix", "module."))
        self.assertIn("--strip-prefix 'module.'", j["python"])

    def test_backbone_of_several(self):
        """MoCo's two encoders with MLP heads and a float: extract writes the query encoder,
        whose projection head the Python drops."""
        import torch
        q, k = mlp_head(net(seed=44)), mlp_head(net(seed=45))
        sd = collections.OrderedDict()
        sd.update(under("module.encoder_q.", q.state_dict()))
        sd.update(under("module.encoder_k.", k.state_dict()))
        sd["module.queue"] = torch.randn(16, 32)
        path = self.save("moco_float.pth.tar", {"epoch": 200, "lr": 0.03, "state_dict": sd})
        j = self.loads(path, q.state_dict(), backbone=True)
        self.assertEqual(j["verdict_kind"], "backbone")

    def test_sequential_head(self):
        """A fine-tuned Sequential head and a float: extract keeps the head (--no-check)."""
        import torch.nn as nn
        m = net(seed=46)
        m.fc = nn.Sequential(nn.Dropout(0.2), nn.Linear(512, 7))
        path = self.save("seq_float.pth", {"state_dict": m.state_dict(), "best_acc": 0.9})
        j = self.loads(path, m.state_dict())
        self.assertEqual(j["verdict_kind"], "sequential_head")
        self.assertIn("--no-check", j["python"])


if __name__ == "__main__":
    unittest.main()
