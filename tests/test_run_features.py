#!/usr/bin/env python3
"""`ckpt run --features` on a backbone without its classifier (DINO, SwAV, MoCo style).

The reference is torchvision's model with fc = nn.Identity(), loaded from the same state dict
minus fc.* with strict=True, under no_grad in eval mode. Checks:
  * resnet18 (512 values) and resnet50 (2048) backbones saved with torch.save: the --json
    features within 1e-4 x max(1, max|feature|) of PyTorch's, the tolerance test_run.py uses
    for logits, on the default backend and ref; the model says num_classes 0, no topk;
  * the same features, bit for bit, on 1 and 2 threads and in batches of 1 and 3;
  * a backbone with a projection head under fc.* (MoCo's MLP fc) or beside it (SwAV) runs the
    features before it; an unexpected key inside the backbone (layer1.0.se.*) is refused;
  * the text output has one summary line per image whose numbers are PyTorch's (6 digits);
  * without --features a backbone is still refused (exit 2, saying --features), and --logits
    on a backbone is refused;
  * on a full model, --features equals the backbone's features (fc is all it adds).
"""
import json
import os
import re
import sys
import tempfile
import unittest

import numpy as np
import torch
import torchvision

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import ckpt_testlib as lib  # noqa: E402


randomise_bn = lib.randomise_bn


def backbone(arch, seed):
    """A torchvision model with random weights and BatchNorm statistics, its state dict
    without fc.*, and the model with fc = nn.Identity() loaded strictly from that dict."""
    torch.manual_seed(seed)
    model = getattr(torchvision.models, arch)()
    randomise_bn(model, torch.Generator().manual_seed(seed))
    sd = {k: v for k, v in model.state_dict().items() if not k.startswith("fc.")}
    ref = getattr(torchvision.models, arch)()
    ref.fc = torch.nn.Identity()
    ref.load_state_dict(sd, strict=True)
    return model, sd, ref.eval()


def inputs(n, size, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, size, size, generator=g)


def run_json(*args):
    rc, out, err = lib.run_ckpt(["run", "--json"] + list(args), timeout=300)
    return rc, (json.loads(out) if out.strip() else None), err


def close(test, ours, ref, what):
    ours = np.asarray(ours, dtype=np.float64)
    ref = ref.double().numpy()
    test.assertEqual(ours.shape, ref.shape, what)
    test.assertLessEqual(np.abs(ours - ref).max(), 1e-4 * max(1.0, np.abs(ref).max()), what)


class Features(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory()
        d = cls.tmp.name
        cls.x = inputs(3, 160, 5)
        cls.xpath = os.path.join(d, "x.npy")
        np.save(cls.xpath, cls.x.numpy())
        cls.nets = {}
        for arch, seed in (("resnet18", 21), ("resnet50", 22)):
            model, sd, ref = backbone(arch, seed)
            path = os.path.join(d, arch + "-backbone.pth")
            torch.save(sd, path)
            with torch.no_grad():
                feats = ref(cls.x)
            cls.nets[arch] = (model, path, feats)

    @classmethod
    def tearDownClass(cls):
        cls.tmp.cleanup()

    def test_backbone_features_match_pytorch(self):
        for arch, width in (("resnet18", 512), ("resnet50", 2048)):
            _, path, feats = self.nets[arch]
            self.assertEqual(tuple(feats.shape), (3, width))
            for backend in ("ref", "auto") if arch == "resnet18" else ("auto",):
                rc, doc, err = run_json(path, "--input", self.xpath, "--features",
                                        "--backend", backend)
                self.assertEqual(rc, 0, err)
                m = doc["model"]
                self.assertEqual((m["arch"], m["num_classes"], m["features"]),
                                 (arch, 0, width))
                self.assertEqual(len(doc["results"]), 3)
                for i, r in enumerate(doc["results"]):
                    self.assertNotIn("topk", r)
                    self.assertNotIn("logits", r)
                    close(self, r["features"], feats[i], "%s %s image %d" % (arch, backend, i))

    def test_deterministic_across_threads_and_batches(self):
        _, path, _ = self.nets["resnet18"]
        base = None
        for extra in (["--threads", "1", "--batch", "1"], ["--threads", "2"],
                      ["--batch", "3", "--threads", "1"], ["--batch", "2"]):
            rc, doc, err = run_json(path, "--input", self.xpath, "--features", *extra)
            self.assertEqual(rc, 0, err)
            got = [r["features"] for r in doc["results"]]
            if base is None:
                base = got
            self.assertEqual(got, base, extra)

    def test_projection_head_under_fc(self):
        """MoCo v2's MLP fc (fc.0, fc.2): unexpected keys under fc. are not the features'."""
        model, _, ref = backbone("resnet18", 23)
        sd = {k: v for k, v in model.state_dict().items() if not k.startswith("fc.")}
        g = torch.Generator().manual_seed(4)
        sd["fc.0.weight"] = torch.randn(64, 512, generator=g)
        sd["fc.0.bias"] = torch.randn(64, generator=g)
        sd["fc.2.weight"] = torch.randn(16, 64, generator=g)
        sd["fc.2.bias"] = torch.randn(16, generator=g)
        path = os.path.join(self.tmp.name, "moco.pth")
        torch.save({"state_dict": {"module.encoder_q." + k: v for k, v in sd.items()}}, path)
        with torch.no_grad():
            feats = ref(self.x)
        rc, doc, err = run_json(path, "--input", self.xpath, "--features")
        self.assertEqual(rc, 0, err)
        for i, r in enumerate(doc["results"]):
            close(self, r["features"], feats[i], "image %d" % i)

    def test_side_modules_left_aside(self):
        """SwAV: module. + projection_head.* and prototypes.weight next to the backbone; the
        features are the backbone's, and a warning says what was left aside."""
        model, _, ref = backbone("resnet18", 24)
        sd = {"module." + k: v for k, v in model.state_dict().items()
              if not k.startswith("fc.")}
        g = torch.Generator().manual_seed(5)
        sd["module.projection_head.0.weight"] = torch.randn(64, 512, generator=g)
        sd["module.projection_head.0.bias"] = torch.randn(64, generator=g)
        sd["module.prototypes.weight"] = torch.randn(30, 64, generator=g)
        path = os.path.join(self.tmp.name, "swav.pth")
        torch.save(sd, path)
        with torch.no_grad():
            feats = ref(self.x)
        rc, doc, err = run_json(path, "--input", self.xpath, "--features")
        self.assertEqual(rc, 0, err)
        self.assertIn("3 keys outside the backbone", err)
        for i, r in enumerate(doc["results"]):
            close(self, r["features"], feats[i], "image %d" % i)

    def test_unexpected_key_inside_the_backbone_is_refused(self):
        """layer1.0.se.*: another network (squeeze-excitation), not this backbone."""
        _, sd, _ = backbone("resnet18", 25)
        sd = dict(sd)
        sd["layer1.0.se.fc1.weight"] = torch.randn(4, 64, 1, 1)
        path = os.path.join(self.tmp.name, "se.pth")
        torch.save(sd, path)
        rc, out, err = lib.run_ckpt(["run", path, "--input", self.xpath, "--features"],
                                    timeout=120)
        self.assertEqual(rc, 1, err)
        self.assertIn("would not load strictly", err)
        self.assertIn("layer1.0.se.fc1.weight", err)
        self.assertEqual(out, "")

    def test_text_summary(self):
        _, path, feats = self.nets["resnet18"]
        rc, out, err = lib.run_ckpt(["run", path, "--input", self.xpath, "--features"],
                                    timeout=300)
        self.assertEqual(rc, 0, err)
        self.assertIn("resnet18() backbone", out)
        lines = [l for l in out.splitlines() if l.startswith("  features:")]
        self.assertEqual(len(lines), 3, out)
        num = r"([-+0-9.e]+|nan|-?inf)"
        for i, line in enumerate(lines):
            m = re.match(r"  features: (\d+) values, L2 norm %s, min %s, max %s, mean %s"
                         % (num, num, num, num), line)
            self.assertIsNotNone(m, line)
            f = feats[i].double()
            self.assertEqual(int(m.group(1)), 512)
            for got, want in zip(m.groups()[1:], (f.norm(), f.min(), f.max(), f.mean())):
                self.assertAlmostEqual(float(got), want.item(),
                                       delta=2e-4 * max(1.0, abs(want.item())), msg=line)

    def test_refusals(self):
        _, path, _ = self.nets["resnet18"]
        rc, out, err = lib.run_ckpt(["run", path, "--input", self.xpath], timeout=120)
        self.assertEqual(rc, 2, err)
        self.assertIn("a backbone without its classifier", err)
        self.assertIn("--features", err)
        self.assertEqual(out, "")
        rc, out, err = lib.run_ckpt(["run", path, "--input", self.xpath, "--features",
                                     "--logits"], timeout=120)
        self.assertEqual(rc, 2, err)
        self.assertIn("no logits", err)

    def test_full_model_features_are_the_backbones(self):
        model, _, _ = self.nets["resnet18"]
        path = os.path.join(self.tmp.name, "full.pth")
        torch.save(model.state_dict(), path)
        rc, doc, err = run_json(path, "--input", self.xpath, "--features", "--logits")
        self.assertEqual(rc, 0, err)
        self.assertEqual(doc["model"]["num_classes"], 1000)
        model.eval()
        with torch.no_grad():
            logits = model(self.x)
        _, bpath, feats = self.nets["resnet18"]
        rc, bdoc, err = run_json(bpath, "--input", self.xpath, "--features")
        self.assertEqual(rc, 0, err)
        for i, (r, b) in enumerate(zip(doc["results"], bdoc["results"])):
            close(self, r["logits"], logits[i], "logits %d" % i)
            close(self, r["features"], feats[i], "features %d" % i)
            self.assertEqual(r["features"], b["features"], "image %d" % i)


if __name__ == "__main__":
    unittest.main()
