#!/usr/bin/env python3
"""`ckpt run` end to end against torchvision: image files in, logits out.

The reference is PyTorch's own pipeline: PIL.Image.open(p).convert("RGB") -> Resize ->
CenterCrop -> ToTensor -> Normalize -> torchvision.models.X(...).eval() under no_grad. Checks:
  * logits within 1e-4 x max(1, max|logit|) of PyTorch's and the same top-5, for a training
    checkpoint with a wrapper prefix, random weights and randomised BatchNorm statistics;
  * --save-input equals torchvision's preprocessed tensor bit for bit; --input X.npy gives the
    same logits as the images; --features equals the pooled features;
  * determinism: --repeat, --threads 1 vs 2, --batch 1 vs 8 give the same bits;
  * refusal: weights that would not load strictly are never run (exit 1, check's explanation);
  * a bad image gets its own error, and the other images are still classified (exit 2).
"""
import hashlib
import json
import os
import re
import sys
import tempfile
import unittest

import numpy as np
import torch
import torchvision
from PIL import Image
from torchvision import transforms

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import ckpt_testlib as lib  # noqa: E402

FIX = os.path.join(os.environ.get("CKPT_FIXTURES", "/tmp/ckpt-fixtures"), "run")
STAMP_VERSION = "2"


randomise_bn = lib.randomise_bn


def make_fixtures():
    stamp = os.path.join(FIX, ".stamp")
    with open(__file__, "rb") as f:
        me = hashlib.sha256(f.read()).hexdigest() + STAMP_VERSION
    if os.path.exists(stamp):
        with open(stamp) as f:
            if f.read() == me:
                return
    os.makedirs(FIX, exist_ok=True)
    gen = torch.Generator().manual_seed(7)
    torch.manual_seed(7)
    model = torchvision.models.resnet18(num_classes=37)
    randomise_bn(model, gen)
    sd = {"module." + k: v for k, v in model.state_dict().items()}  # DataParallel-saved
    torch.save({"state_dict": sd, "epoch": 12, "best_acc1": torch.tensor(61.5)},
               os.path.join(FIX, "r18-dp.pth"))
    broken = dict(model.state_dict())
    del broken["layer2.0.bn1.running_var"]
    torch.save(broken, os.path.join(FIX, "r18-missing.pth"))

    rng = np.random.default_rng(3)
    # smooth-ish images so that resampling matters: noise plus gradients
    def image(w, h, mode):
        y, x = np.mgrid[0:h, 0:w]
        base = np.stack([(x * 255 // max(w - 1, 1)), (y * 255 // max(h - 1, 1)),
                         ((x + y) * 127 // max(w + h - 2, 1))], -1)
        a = np.clip(base + rng.integers(-40, 40, (h, w, 3)), 0, 255).astype(np.uint8)
        return Image.fromarray(a, "RGB").convert(mode)

    specs = [("a.png", 300, 260, "RGB"), ("b.jpg", 512, 384, "RGB"), ("c.png", 180, 200, "L"),
             ("d.png", 640, 227, "P"), ("e.jpg", 257, 999, "L"), ("f.png", 224, 224, "RGBA"),
             ("g.jpg", 1024, 768, "RGB"), ("h.png", 96, 120, "RGB"), ("i.png", 333, 333, "LA")]
    for name, w, h, mode in specs:
        img = image(w, h, mode)
        p = os.path.join(FIX, name)
        if name.endswith(".jpg"):
            img.save(p, quality=90)
        else:
            img.save(p)
    with open(os.path.join(FIX, "b.jpg"), "rb") as f:
        head = f.read()[:700]
    with open(os.path.join(FIX, "bad.jpg"), "wb") as f:
        f.write(head)  # a truncated JPEG
    with open(os.path.join(FIX, "labels.txt"), "w") as f:
        f.write("".join(f"class-{i}\n" for i in range(37)))
    with open(stamp, "w") as f:
        f.write(me)


IMAGES = ["a.png", "b.jpg", "c.png", "d.png", "e.jpg", "f.png", "g.jpg", "h.png", "i.png"]


def torch_reference(resize=256, crop=224):
    model = torchvision.models.resnet18(num_classes=37)
    sd = torch.load(os.path.join(FIX, "r18-dp.pth"), map_location="cpu")["state_dict"]
    model.load_state_dict({k[len("module."):]: v for k, v in sd.items()}, strict=True)
    model.eval()
    tf = transforms.Compose([transforms.Resize(resize), transforms.CenterCrop(crop),
                             transforms.ToTensor(),
                             transforms.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])
    def load(n):
        with Image.open(os.path.join(FIX, n)) as im:
            return tf(im.convert("RGB"))
    x = torch.stack([load(n) for n in IMAGES])
    feats = {}
    h = model.avgpool.register_forward_hook(lambda m, i, o: feats.__setitem__("f", o.flatten(1)))
    with torch.no_grad():
        logits = model(x)
    h.remove()
    return x, logits, feats["f"]


def run_json(*args):
    rc, out, err = lib.run_ckpt(["run", "--json"] + list(args), timeout=300)
    return rc, (json.loads(out) if out.strip() else None), err


class Run(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        make_fixtures()
        cls.x, cls.logits, cls.feats = torch_reference()
        cls.paths = [os.path.join(FIX, n) for n in IMAGES]
        rc, cls.doc, err = run_json(os.path.join(FIX, "r18-dp.pth"), *cls.paths, "--logits",
                                    "--features", "--labels", os.path.join(FIX, "labels.txt"))
        assert rc == 0, err

    def test_logits_match_pytorch(self):
        m = self.doc["model"]
        self.assertEqual((m["arch"], m["num_classes"], m["prefix"], m["state_dict_path"]),
                         ("resnet18", 37, "module.", ["state_dict"]))
        self.assertEqual(len(self.doc["results"]), len(IMAGES))
        for i, r in enumerate(self.doc["results"]):
            ours = np.array(r["logits"], dtype=np.float64)
            ref = self.logits[i].double().numpy()
            bound = 1e-4 * max(1.0, np.abs(ref).max())
            self.assertLessEqual(np.abs(ours - ref).max(), bound, IMAGES[i])
            top5 = [t["index"] for t in r["topk"]]
            self.assertEqual(top5, torch.topk(self.logits[i], 5).indices.tolist(), IMAGES[i])
            self.assertEqual(r["topk"][0]["label"], f"class-{top5[0]}")
            probs = torch.softmax(self.logits[i].double(), 0)
            self.assertAlmostEqual(r["topk"][0]["prob"], probs[top5[0]].item(), places=5)
            f = np.array(r["features"])
            fref = self.feats[i].double().numpy()
            self.assertLessEqual(np.abs(f - fref).max(), 1e-4 * max(1.0, np.abs(fref).max()))

    def test_save_input_is_torchvision_bit_for_bit(self):
        with tempfile.TemporaryDirectory() as d:
            out = os.path.join(d, "x.npy")
            rc, doc, err = run_json(os.path.join(FIX, "r18-dp.pth"), *self.paths,
                                    "--save-input", out)
            self.assertEqual(rc, 0, err)
            ours = np.load(out)
            self.assertEqual(ours.dtype, np.float32)
            self.assertEqual(ours.shape, tuple(self.x.shape))
            self.assertTrue(np.array_equal(ours.view(np.uint32), self.x.numpy().view(np.uint32)))
            # and the array fed back in gives the same logits, bit for bit
            rc, doc2, err = run_json(os.path.join(FIX, "r18-dp.pth"), "--input", out, "--logits")
            self.assertEqual(rc, 0, err)
            for a, b in zip(self.doc["results"], doc2["results"]):
                self.assertEqual(a["logits"], b["logits"])

    def test_resize_and_crop_options(self):
        x, logits, _ = torch_reference(resize=232, crop=200)
        rc, doc, err = run_json(os.path.join(FIX, "r18-dp.pth"), *self.paths, "--logits",
                                "--resize", "232", "--crop", "200")
        self.assertEqual(rc, 0, err)
        for i, r in enumerate(doc["results"]):
            ref = logits[i].double().numpy()
            self.assertLessEqual(np.abs(np.array(r["logits"]) - ref).max(),
                                 1e-4 * max(1.0, np.abs(ref).max()))

    def test_deterministic_across_threads_batches_repeats(self):
        f = os.path.join(FIX, "r18-dp.pth")
        base = [r["logits"] for r in self.doc["results"]]
        for extra in (["--threads", "1"], ["--threads", "2"], ["--batch", "1"],
                      ["--batch", "8", "--threads", "1"]):
            rc, doc, err = run_json(f, *self.paths, "--logits", *extra)
            self.assertEqual(rc, 0, err)
            self.assertEqual([r["logits"] for r in doc["results"]], base, extra)
        # one image alone equals the same image in the middle of a batch
        rc, doc, err = run_json(f, self.paths[4], "--logits")
        self.assertEqual(doc["results"][0]["logits"], base[4])
        rc, doc, err = run_json(f, *self.paths[:3], "--repeat", "3")
        self.assertEqual(rc, 0, err)
        self.assertTrue(doc["repeat"]["bit_identical"])

    def test_batched_path_bit_identical_at_every_position(self):
        """--batch B runs groups of 8, 4, 2 and 1 images on batched oneDNN primitives: every
        image of every batch size from 1 to 9 (each group size at each of its positions), on 1
        and 2 threads, must have the bits it has alone on one thread."""
        f = os.path.join(FIX, "r18-dp.pth")
        x = self.x.numpy()
        xs = np.concatenate([x, -x, x[::-1] * 0.5, x * 2.0, x[:, ::-1]])
        self.assertGreaterEqual(len(xs), 9)
        xs = np.ascontiguousarray(xs[:9], dtype=np.float32)
        with tempfile.TemporaryDirectory() as d:
            inp = os.path.join(d, "x.npy")
            np.save(inp, xs)
            rc, doc, err = run_json(f, "--input", inp, "--logits", "--batch", "1",
                                    "--threads", "1")
            self.assertEqual(rc, 0, err)
            alone = [r["logits"] for r in doc["results"]]
            for threads in ("1", "2"):
                for b in range(1, 10):
                    rc, doc, err = run_json(f, "--input", inp, "--logits", "--batch", str(b),
                                            "--threads", threads)
                    self.assertEqual(rc, 0, err)
                    got = [r["logits"] for r in doc["results"]]
                    for i in range(len(xs)):
                        self.assertEqual(got[i], alone[i], "image %d, --batch %d, %s threads"
                                         % (i, b, threads))

    def test_bf16_precision(self):
        """--precision bf16: within 5e-2 of PyTorch's fp32 logits where the CPU has bf16 dot
        products; refused (exit 2, saying why) where oneDNN is told it has none."""
        f = os.path.join(FIX, "r18-dp.pth")
        no_bf16 = dict(lib.RUN_ENV, DNNL_MAX_CPU_ISA="AVX512_CORE")
        rc, out, err = lib.run_ckpt(["run", f, self.paths[0], "--precision", "bf16"],
                                    env=no_bf16)
        self.assertEqual(rc, 2, err)
        self.assertIn("bfloat16", err)
        rc, out, err = lib.run_ckpt(["run", f, self.paths[0], "--precision", "fp16"])
        self.assertEqual(rc, 2, err)
        rc, doc, err = run_json(f, *self.paths, "--logits", "--precision", "bf16")
        if rc == 2 and "bfloat16" in err:
            self.skipTest("this CPU has no bf16 dot products")
        self.assertEqual(rc, 0, err)
        self.assertEqual(doc["model"]["precision"], "bf16")
        for i, r in enumerate(doc["results"]):
            ref = self.logits[i].double().numpy()
            err_i = np.abs(np.array(r["logits"]) - ref).max() / max(1.0, np.abs(ref).max())
            self.assertLessEqual(err_i, 5e-2, IMAGES[i])

    def test_reference_backend_agrees(self):
        rc, doc, err = run_json(os.path.join(FIX, "r18-dp.pth"), self.paths[0], "--logits",
                                "--backend", "ref")
        self.assertEqual(rc, 0, err)
        ref = self.logits[0].double().numpy()
        self.assertLessEqual(np.abs(np.array(doc["results"][0]["logits"]) - ref).max(),
                             1e-4 * max(1.0, np.abs(ref).max()))

    def test_refuses_weights_that_would_not_load(self):
        rc, out, err = lib.run_ckpt(["run", os.path.join(FIX, "r18-missing.pth"),
                                     self.paths[0]], timeout=120)
        self.assertEqual(rc, 1)
        self.assertEqual(out, "")
        self.assertIn("would not load strictly", err)
        self.assertIn('Missing key(s) in state_dict: "layer2.0.bn1.running_var"', err)

    def test_bad_image_does_not_stop_the_others(self):
        bad = os.path.join(FIX, "bad.jpg")
        missing = os.path.join(FIX, "nope.png")
        rc, doc, err = run_json(os.path.join(FIX, "r18-dp.pth"), self.paths[0], bad, missing,
                                self.paths[1], "--logits")
        self.assertEqual(rc, 2)
        lines = [l for l in err.splitlines() if l.startswith("ckpt: error: ")]
        self.assertTrue(any(bad in l and "truncated" in l for l in lines), err)
        self.assertTrue(any(missing in l for l in lines), err)
        res = doc["results"]
        self.assertEqual([("error" in r) for r in res], [False, True, True, False])
        self.assertEqual(res[0]["logits"], self.doc["results"][0]["logits"])
        self.assertEqual(res[3]["logits"], self.doc["results"][1]["logits"])

    def test_profile_table(self):
        """--profile: a row per step with its GFLOP/s and share of the peak measured on the
        same threads; the rows are torchvision's convolutions, and GFLOP/s is their FLOPs
        (counted here from torch's shapes) over the time shown."""
        model = torchvision.models.resnet18(num_classes=37)
        shapes = {}
        hooks = [m.register_forward_hook(
                     lambda m, i, o, n=n: shapes.__setitem__(n, (m, tuple(o.shape))))
                 for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)]
        with torch.no_grad():
            model(self.x[:1])
        for h in hooks:
            h.remove()
        rc, out, err = lib.run_ckpt(["run", os.path.join(FIX, "r18-dp.pth"), *self.paths,
                                     "--profile", "--threads", "2"], timeout=300)
        self.assertEqual(rc, 0, err)
        self.assertIn("batched primitives for up to 8 images at once", err)
        m = re.search(r"^  peak +([0-9.]+) GFLOP/s \(fp32 multiply-adds on 2 threads", err, re.M)
        if m is None:
            self.skipTest("no peak measured on this CPU (not x86-64 with AVX2 or AVX-512)")
        peak = float(m.group(1))
        self.assertGreater(peak, 1.0)
        rows = {}
        for line in err.splitlines():
            f = line.split()
            if len(f) == 5 and f[0] in shapes:
                rows[f[0]] = (float(f[2]), float(f[3]), float(f[4]))
        self.assertEqual(sorted(rows), sorted(shapes))
        for name, (ms, rate, pct) in rows.items():
            conv, (_, oc, oh, ow) = shapes[name]
            gflop = 2e-9 * conv.in_channels * conv.kernel_size[0] * conv.kernel_size[1] * \
                oc * oh * ow
            # ms is shown to 3 decimals, GFLOP/s to 1
            lo, hi = gflop / ((ms + 5e-4) * 1e-3), gflop / (max(ms - 5e-4, 1e-6) * 1e-3)
            self.assertTrue(lo - 0.06 <= rate <= hi + 0.06, (name, rate, lo, hi))
            # the peak is shown to 1 decimal and the percentage to none (the peak can be small:
            # a sanitizer build runs the FMA loop unoptimised)
            lo, hi = 100 * (rate - 0.05) / (peak + 0.05), 100 * (rate + 0.05) / (peak - 0.05)
            self.assertTrue(lo - 0.5 <= pct <= hi + 0.5, (name, pct, lo, hi))

    def test_human_output_and_usage(self):
        rc, out, err = lib.run_ckpt(["run", os.path.join(FIX, "r18-dp.pth"), self.paths[0],
                                     "--labels", os.path.join(FIX, "labels.txt"), "--topk", "3"])
        self.assertEqual(rc, 0, err)
        top = torch.topk(self.logits[0], 3).indices.tolist()
        self.assertIn(f"class-{top[0]}", out)
        self.assertEqual(out.count("class-"), 3)
        for bad in (["--topk", "0"], ["--crop", "x"], ["--backend", "gpu"], []):
            rc, out, err = lib.run_ckpt(["run", os.path.join(FIX, "r18-dp.pth")] +
                                        ([] if not bad else [self.paths[0]]) + bad)
            self.assertEqual(rc, 2, bad)
            self.assertEqual(out, "")


if __name__ == "__main__":
    lib.main("test_run")
