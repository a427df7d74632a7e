#!/usr/bin/python3
"""
test_layouts_heads.py - issue 8: heads in the classifier's place. A fine-tuned model whose fc is
nn.Sequential(Dropout, Linear) or an MLP, an empty [0]-row head, a CIFAR ResNet that is not
torchvision's, renamed heads (mmpretrain, solo-learn). Checkpoints are made with torch here;
ckpt's printed Python is executed under Debian's torch 1.13 and every tensor it loads is
compared with the network that was saved.
"""

import collections
import json
import os
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ckpt_testlib as L  # noqa: E402


net = L.random_net


def randomise(m, seed):
    import torch
    torch.manual_seed(seed)
    with torch.no_grad():
        for t in m.state_dict().values():
            if t.is_floating_point():
                t.copy_(torch.randn_like(t))
    return m


def cifar_resnet18(classes=10):
    """kuangliu/pytorch-cifar's ResNet18: 3x3 stem, shortcut.*, linear.*."""
    import torch.nn as nn

    class BasicBlock(nn.Module):
        def __init__(self, i, p, stride=1):
            super().__init__()
            self.conv1 = nn.Conv2d(i, p, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(p)
            self.conv2 = nn.Conv2d(p, p, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(p)
            self.shortcut = nn.Sequential()
            if stride != 1 or i != p:
                self.shortcut = nn.Sequential(nn.Conv2d(i, p, 1, stride, bias=False),
                                              nn.BatchNorm2d(p))

    class ResNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(64)
            widths, inp = (64, 128, 256, 512), 64
            for n, w in enumerate(widths):
                s = 1 if n == 0 else 2
                setattr(self, "layer%d" % (n + 1),
                        nn.Sequential(BasicBlock(inp, w, s), BasicBlock(w, w, 1)))
                inp = w
            self.linear = nn.Linear(512, classes)

    return ResNet


class Heads(L.SavingCase):
    def run_python(self, path, codes=(0, 1)):
        """ckpt check --json, then its Python executed as printed; (report, namespace)."""
        j = L.run_json(self, ["check", "--json", path], ok_codes=codes)
        return j, L.run_python(self, j["python"], path)

    def assert_same(self, got, want, skip=()):
        for k, v in want.items():
            if any(k.startswith(s) for s in skip):
                continue
            self.assertIn(k, got)
            self.assertTrue(got[k].equal(v), "%s differs" % k)

    def extract_and_run(self, path, arch, classes, want, model, seed):
        """extract's file loads strictly into torchvision's arch(num_classes=classes) with want's
        tensors; run's logits on an input are those of model (a usable forward)."""
        import numpy as np
        import torch
        import torchvision
        out = path + ".extracted.pth"
        rc, o, e = L.run_ckpt(["extract", path, "-o", out], timeout=120)
        self.assertEqual(rc, 0, o + e)
        r = getattr(torchvision.models, arch)(num_classes=classes)
        r.load_state_dict(torch.load(out, map_location="cpu", weights_only=True), strict=True)
        self.assert_same(r.state_dict(), want)
        x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(seed))
        npy = path + ".npy"
        np.save(npy, x.numpy())
        rc, o, e = L.run_ckpt(["run", path, "--input", npy, "--logits", "--json"], timeout=120)
        self.assertEqual(rc, 0, o + e)
        got = json.loads(o)["results"][0]["logits"]
        with torch.no_grad():
            ref = model.eval()(x)[0].tolist()
        self.assertEqual(len(got), classes)
        for g, w in zip(got, ref):
            self.assertAlmostEqual(g, w, delta=1e-4 * max(1.0, max(map(abs, ref))))

    def words(self, j):
        return "\n".join(w["message"] for w in j["warnings"])

    # --- 1. Sequential and MLP heads: the class count from the last Linear -----------------

    def check_sequential(self, name, head, classes):
        m = net(seed=len(name))
        m.fc = head
        randomise(m, len(name) + 1)
        path = self.save(name, m.state_dict())
        j, ns = self.run_python(path)
        self.assertEqual(j["num_classes"], classes)
        self.assertIn("strict=True", j["python"])
        self.assert_same(ns["model"].state_dict(), m.state_dict())
        self.assertEqual(len(ns["model"].state_dict()), len(m.state_dict()))
        self.assertIn("%d classes" % classes, self.words(j))
        self.assertNotIn("num_classes=1000", j["python"])
        return j

    def test_dropout_linear(self):
        """fc = Sequential(Dropout, Linear(512, 7)): fc.1.*, 7 classes."""
        import torch.nn as nn
        j = self.check_sequential("fc1.pth", nn.Sequential(nn.Dropout(), nn.Linear(512, 7)), 7)
        self.assertIn("Dropout()", j["python"])
        # run cannot build that head: it says so, and --features runs the network without it
        import numpy as np
        path = os.path.join(self.tmp.name, "fc1.pth")
        npy = path + ".npy"
        np.save(npy, np.zeros((1, 3, 32, 32), dtype=np.float32))
        rc, out, err = L.run_ckpt(["run", path, "--input", npy])
        self.assertEqual(rc, 2, out + err)
        self.assertIn("nn.Sequential (7 classes)", err)
        doc = L.run_json(self, ["run", path, "--input", npy, "--features", "--json"])
        self.assertEqual(len(doc["results"][0]["features"]), 512)

    def test_sequential_head_features(self):
        """run --features on a network with a Sequential head: torchvision's pooled features
        (fc = nn.Identity()) of the same weights."""
        import copy
        import numpy as np
        import torch
        import torch.nn as nn
        m = self.usable(net(seed=44), 44)
        m.fc = nn.Sequential(nn.Dropout(), nn.Linear(512, 5))
        path = self.save("seqfeat.pth", m.state_dict())
        x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(5))
        npy = path + ".npy"
        np.save(npy, x.numpy())
        doc = L.run_json(self, ["run", path, "--input", npy, "--features", "--json"])
        ref = copy.deepcopy(m).eval()
        ref.fc = nn.Identity()
        with torch.no_grad():
            want = ref(x)
        for i, r in enumerate(doc["results"]):
            w = want[i].tolist()
            self.assertEqual(len(r["features"]), len(w))
            for g, e in zip(r["features"], w):
                self.assertAlmostEqual(g, e, delta=1e-4 * max(1.0, max(map(abs, w))))

    def test_mlp_two_linears(self):
        """fc.0 / fc.2: Linear, ReLU, Linear."""
        import torch.nn as nn
        self.check_sequential("mlp2.pth", nn.Sequential(nn.Linear(512, 64), nn.ReLU(),
                                                        nn.Linear(64, 5)), 5)

    def test_mlp_with_batchnorm(self):
        """fc.0 / fc.1 (BatchNorm1d) / fc.3."""
        import torch.nn as nn
        self.check_sequential("mlp3.pth", nn.Sequential(nn.Linear(512, 32), nn.BatchNorm1d(32),
                                                        nn.ReLU(), nn.Linear(32, 3)), 3)

    def test_mlp_two_gaps(self):
        """fc.0 / fc.3: Linear, ReLU, Dropout, Linear."""
        import torch.nn as nn
        self.check_sequential("mlp4.pth", nn.Sequential(nn.Linear(512, 16), nn.ReLU(),
                                                        nn.Dropout(), nn.Linear(16, 11)), 11)

    def test_sequential_in_training_checkpoint(self):
        """The same head under 'state_dict' with DataParallel's module. prefix."""
        import torch.nn as nn
        m = net(seed=40)
        m.fc = nn.Sequential(nn.Dropout(0.3), nn.Linear(512, 4))
        randomise(m, 41)
        sd = collections.OrderedDict(("module." + k, v) for k, v in m.state_dict().items())
        path = self.save("ft.pth.tar", {"epoch": 3, "state_dict": sd})
        j, ns = self.run_python(path)
        self.assertEqual(j["num_classes"], 4)
        self.assert_same(ns["model"].state_dict(), m.state_dict())

    # --- 1b. a classifier saved beside the network under another name ----------------------

    def mmpretrain(self, name, extra=None, meta=None):
        """mmcv's save_checkpoint of an mmpretrain ImageClassifier: {'meta', 'state_dict'}
        with backbone.* (a torchvision-shaped ResNet without fc) and head.fc.* (LinearClsHead);
        extra: more keys in the state dict; meta: more entries in meta."""
        import collections
        m = self.usable(net(num_classes=6, seed=len(name)), len(name))
        sd = collections.OrderedDict()
        for k, v in m.state_dict().items():
            sd[("head." if k.startswith("fc.") else "backbone.") + k] = v
        sd.update(extra or {})
        path = self.save(name, {"meta": dict({"mmcls_version": "0.25.0", "epoch": 100,
                                              "iter": 5000,
                                              "CLASSES": ["a", "b", "c", "d", "e", "f"]},
                                             **(meta or {})),
                                "state_dict": sd})
        return m, path

    def test_mmpretrain_head_fc(self):
        """head.fc.* is the classifier: check loads it as fc (exit 0, 6 classes), the Python
        moves it, extract writes it as fc, run classifies with it."""
        m, path = self.mmpretrain("mmcls.pth")
        j, ns = self.run_python(path, codes=(0,))
        self.assertEqual((j["ok"], j["num_classes"], j["verdict_kind"]), (True, 6, "model"))
        self.assertIn("'head.fc.weight' and 'head.fc.bias'", self.words(j))
        self.assert_same(ns["model"].state_dict(), m.state_dict())
        self.extract_and_run(path, "resnet18", 6, m.state_dict(), m, seed=3)

    def test_mmpretrain_head_fc_through_extract(self):
        """mmcv's meta with a float (hook_msgs' best score): 1.13's weights_only refuses the
        file, so the Python runs ckpt extract, whose file holds the head as fc."""
        m, path = self.mmpretrain("mmcls_f.pth", meta={"hook_msgs": {"best_score": 0.9312}})
        j, ns = self.run_python(path, codes=(0,))
        self.assertEqual((j["ok"], j["num_classes"], j["verdict_kind"]), (True, 6, "model"))
        self.assertIn("ckpt extract", j["python"])
        self.assertNotIn("sd.pop(", j["python"])
        self.assert_same(ns["model"].state_dict(), m.state_dict())

    def test_two_linears_beside_is_no_head(self):
        """Two modules beside the network that could each be the classifier: neither is taken,
        the file is a backbone (and so is DINO's head.mlp.*, many keys in one module)."""
        import torch
        _, path = self.mmpretrain("two.pth", {"aux.weight": torch.randn(4, 512),
                                              "aux.bias": torch.randn(4)})
        j, ns = self.run_python(path)
        self.assertEqual(j["verdict_kind"], "backbone")
        self.assertNotIn("renamed_head", [w["code"] for w in j["warnings"]])

    def test_renamed_head_of_other_width_is_no_head(self):
        """A Linear beside the network whose inputs are not the network's features."""
        import torch
        m = net(seed=5)
        sd = {"backbone." + k: v for k, v in m.state_dict().items() if not k.startswith("fc.")}
        sd["head.fc.weight"], sd["head.fc.bias"] = torch.randn(3, 256), torch.randn(3)
        j, _ = self.run_python(self.save("narrow.pth", sd))
        self.assertEqual(j["verdict_kind"], "backbone")

    # --- 1c. modules renamed one for one: paired with torchvision's by shape and order -----

    def check_renamed(self, name, m, rename, wrap=lambda sd: sd, prefix="", classes=None,
                      drop=()):
        """m's state dict with every key passed through rename (and the keys ending in drop
        left out), wrapped, saved: check loads it strictly under torchvision's names (exit 0),
        its renames are exactly the keys rename changed, in the model's order; the printed
        Python, extract's file and run each give m's weights."""
        want = collections.OrderedDict(
            (k, v) for k, v in m.state_dict().items() if not k.endswith(drop or ("\0",)))
        sd = collections.OrderedDict((prefix + rename(k), v) for k, v in want.items())
        path = self.save(name, wrap(sd))
        j, ns = self.run_python(path, codes=(0,))
        self.assertEqual((j["ok"], j["verdict_kind"]), (True, "model"))
        if classes:
            self.assertEqual(j["num_classes"], classes)
        expect = [[k, prefix + rename(k)] for k in want if rename(k) != k]
        self.assertEqual(j["renames"], expect)
        self.assertIn("renamed_keys", [w["code"] for w in j["warnings"]])
        got = ns["model"].state_dict()
        self.assert_same(got, want)
        for k, v in got.items():  # the rest is the model's own: only num_batches_tracked
            self.assertTrue(k in want or k.endswith("num_batches_tracked"), k)
        self.extract_and_run(path, j["arch"], j["num_classes"], want, m, seed=4)
        return j

    def usable(self, m, seed):
        import torch
        L.randomise_bn(m, torch.Generator().manual_seed(seed))
        with torch.no_grad():  # convolutions of N(0, 1) weights would overflow float32
            for t in m.state_dict().values():
                if t.dim() == 4:
                    t.mul_(0.05)
        return m

    def test_renamed_downsample_in_training_checkpoint(self):
        """A fork's 'shortcut' for 'downsample', under DataParallel's module. in a training
        checkpoint with 10 classes and a float (1.13's weights_only refuses it): recognised as
        resnet18 (not lost to a sub-tree), 18 keys renamed, the class count from the file's
        fc."""
        m = self.usable(net(num_classes=10, seed=70), 70)
        j = self.check_renamed("shortcut.pth", m, lambda k: k.replace("downsample", "shortcut"),
                               wrap=lambda sd: {"state_dict": sd, "epoch": 30, "arch": "r18",
                                                "best_acc1": 71.5},
                               prefix="module.", classes=10)
        self.assertEqual(len(j["renames"]), 18)
        # the float sends the Python through ckpt extract, which writes torchvision's names
        self.assertIn("ckpt extract", j["python"])
        self.assertNotIn("renames = {", j["python"])
        self.assertIn("'layer2.0.shortcut' as 'layer2.0.downsample'", self.words(j))

    def test_renamed_classifier(self):
        """fc saved as 'classifier' with 7 classes: the class count from the renamed head."""
        m = self.usable(net(num_classes=7, seed=71), 71)
        self.check_renamed("classifier.pth", m, lambda k: k.replace("fc.", "classifier.", 1)
                           if k.startswith("fc.") else k, classes=7)

    def test_renamed_batchnorm_without_num_batches_tracked(self):
        """bn1 saved as 'norm1' by a torch without num_batches_tracked: the four tensors pair,
        BatchNorm's upgrade rule fills the counters, as load_state_dict does."""
        m = self.usable(net(seed=72), 72)
        self.check_renamed("norm1.pth", m, lambda k: "norm1." + k[4:] if k.startswith("bn1.")
                           else k, drop=("num_batches_tracked",))

    def test_renames_need_order_and_shape(self):
        """No renames when the pairs disagree: a renamed head listed before a renamed
        BatchNorm (shapes differ pair by pair: the strict load fails, and so does the printed
        Python), or one key more on one side."""
        import torch
        m = net(seed=73)
        sd = m.state_dict()
        head = collections.OrderedDict(("classifier." + k[3:], v) for k, v in sd.items()
                                       if k.startswith("fc."))
        rest = collections.OrderedDict(("norm1." + k[4:] if k.startswith("bn1.") else k, v)
                                       for k, v in sd.items() if not k.startswith("fc."))
        swapped = collections.OrderedDict(list(head.items()) + list(rest.items()))
        extra = collections.OrderedDict(("classifier." + k[3:] if k.startswith("fc.") else k, v)
                                        for k, v in sd.items())
        extra["aux.weight"] = torch.randn(3)
        path = self.save("swapped.pth", swapped)
        j = L.run_json(self, ["check", "--json", path], ok_codes=(1,))
        self.assertEqual((j["ok"], j["renames"], j["verdict_kind"]), (False, [], "fails"))
        with self.assertRaises(RuntimeError):
            L.run_python(self, j["python"], path, {})
        # one key more: nothing renamed; classifier.* and aux.* are then modules beside a
        # backbone (as SwAV's heads), loaded without them, never as fc
        path = self.save("extra.pth", extra)
        j = L.run_json(self, ["check", "--json", path], ok_codes=(1,))
        self.assertEqual((j["ok"], j["renames"], j["verdict_kind"]), (False, [], "backbone"))
        self.assertIn("('classifier', 'aux')", j["python"])
        ns = L.run_python(self, j["python"], path)
        self.assert_same(ns["model"].state_dict(), m.state_dict(), skip=("fc.",))

    # --- 2. messages ----------------------------------------------------------------------

    def test_empty_head(self):
        """fc = Linear(512, 0): a backbone, never 'num_classes=0'."""
        import torch.nn as nn
        m = net(seed=20)
        m.fc = nn.Linear(512, 0)
        path = self.save("fc0.pth", m.state_dict())
        j, ns = self.run_python(path)
        out = self.words(j) + j["python"]
        self.assertNotIn("num_classes=0", out)
        self.assertIn("empty", self.words(j))
        self.assertIn("assert set(missing) == {'fc.weight', 'fc.bias'}", j["python"])
        self.assert_same(ns["model"].state_dict(), m.state_dict(), skip=("fc.",))

    def test_cifar_resnet(self):
        """A CIFAR ResNet is a ResNet that is not torchvision's, never 'recognised as'."""
        cls = cifar_resnet18()
        m = randomise(cls(), 30)
        path = self.save("cifar.pth", {"net": m.state_dict(), "acc": 95.1, "epoch": 200})
        rc, out, err = L.run_ckpt(["check", path])
        self.assertEqual(rc, 2, err)
        self.assertIn("not torchvision's", err)
        self.assertIn("CIFAR", err)
        self.assertNotIn("matches none", err)
        # checked against its own model: the snippet builds MyModel and loads strictly
        tpl = self.save("cifar_template.pth", cls().state_dict())
        j = L.run_json(self, ["check", "--json", "--against", tpl, path])
        ns = {"MyModel": cls}
        L.run_python(self, j["python"], path, ns)
        self.assert_same(ns["model"].state_dict(), m.state_dict())
        # a downsample-named copy, whose names fit resnet18: still not torchvision's, the
        # same exit 2, and extract and run refuse it too (never a claimed load)
        sd = {k.replace("shortcut", "downsample"): v for k, v in m.state_dict().items()}
        path2 = self.save("cifar2.pth", sd)
        for cmd in (["check"], ["check", "--json"], ["extract", "-o", path2 + ".out.pth"],
                    ["run", "--input", path2 + ".npy"]):
            rc, out, err = L.run_ckpt(cmd[:1] + [path2] + cmd[1:])
            self.assertEqual(rc, 2, cmd)
            self.assertIn("not torchvision's", err, cmd)
            self.assertNotIn("recognised as", out + err, cmd)
        self.assertFalse(os.path.exists(path2 + ".out.pth"))
        # with --arch named, PyTorch's verdict for that model, and a snippet that fails loudly
        j = L.run_json(self, ["check", "--json", "--arch", "resnet18", path2], ok_codes=(1,))
        with self.assertRaises(RuntimeError):
            L.run_python(self, j["python"], path2, {})

    def test_renamed_modules_not_old_batchnorm(self):
        """BatchNorm modules under other names are not 'an old BatchNorm version'."""
        import torch
        import torchvision
        m = randomise(cifar_resnet18()(), 31)
        path = self.save("cifar_arch.pth", m.state_dict())
        j = L.run_json(self, ["check", "--json", "--arch", "resnet18", path], ok_codes=(1,))
        self.assertNotIn("old BatchNorm version", self.words(j))
        # PyTorch agrees the entries are filled: they are not among its missing keys
        filled = [w for w in j["warnings"] if w["code"] == "num_batches_tracked_filled"]
        self.assertEqual(len(filled), 1)
        sd = torch.load(path)
        del sd["conv1.weight"]  # the 3x3 stem is a size mismatch even with strict=False
        r = torchvision.models.resnet18().load_state_dict(sd, strict=False)
        self.assertFalse(any(k.endswith("num_batches_tracked") for k in r.missing_keys))

    def test_one_tensor_singular(self):
        """'1 tensor', never '1 tensors'."""
        m = net(seed=32)
        sd = m.state_dict()
        sd["conv1.weight"] = sd["conv1.weight"].half()
        path = self.save("one_half.pth", sd)
        j, ns = self.run_python(path)
        self.assertIn("(1 tensor)", self.words(j))
        self.assertNotRegex(self.words(j), r"\b1 tensors")
        self.assert_same(ns["model"].state_dict(), m.state_dict(), skip=("conv1.",))
        self.assertTrue(ns["model"].conv1.weight.equal(sd["conv1.weight"].float()))

    # --- 4. verdict_kind and alternatives in --json -----------------------------------------

    def test_verdict_kinds(self):
        """verdict_kind names what the snippet does; each snippet runs."""
        import torch.nn as nn
        plain = net(seed=50)
        seqm = net(seed=51)
        seqm.fc = nn.Sequential(nn.Dropout(), nn.Linear(512, 6))
        randomise(seqm, 52)
        bb = net(seed=53)
        bbsd = bb.state_dict()
        del bbsd["fc.weight"], bbsd["fc.bias"]
        broken = net(seed=54).state_dict()
        del broken["layer1.0.conv1.weight"]
        cases = [("plain.pth", plain.state_dict(), "model"),
                 ("seq.pth", seqm.state_dict(), "sequential_head"),
                 ("bb.pth", bbsd, "backbone"),
                 ("broken.pth", broken, "fails")]
        for name, sd, kind in cases:
            path = self.save(name, sd)
            j = L.run_json(self, ["check", "--json", path], ok_codes=(0, 1))
            self.assertEqual(j["verdict_kind"], kind, name)
            ns = {}
            if kind == "fails":
                with self.assertRaises(RuntimeError):
                    L.run_python(self, j["python"], path, ns)
            else:
                L.run_python(self, j["python"], path, ns)
                self.assert_same(ns["model"].state_dict(), sd)

    def test_alternatives(self):
        """MoCo's encoder_k, DINO's student and an EMA copy are listed, each loadable."""
        import torch
        q, k = net(seed=60), net(seed=61)
        sd = collections.OrderedDict()
        sd.update(("module.encoder_q." + n, v) for n, v in q.state_dict().items())
        sd.update(("module.encoder_k." + n, v) for n, v in k.state_dict().items())
        sd["module.queue"] = torch.randn(8, 4)
        path = self.save("moco_alt.pth.tar", {"state_dict": sd, "epoch": 1})
        j = L.run_json(self, ["check", "--json", path], ok_codes=(0, 1))
        self.assertEqual(j["prefix"], "module.encoder_q.")
        alts = [(a["path"], a["prefix"], a["kind"]) for a in j["alternatives"]]
        self.assertEqual(alts, [(["state_dict"], "module.encoder_k.", "momentum")])
        # the alternative, asked for, loads the key encoder exactly
        j2 = L.run_json(self, ["check", "--json", "--key", "state_dict", "--strip-prefix",
                               "module.encoder_k.", path], ok_codes=(0, 1))
        ns = L.run_python(self, j2["python"], path)
        self.assert_same(ns["model"].state_dict(), k.state_dict())

        t, s = net(seed=62), net(seed=63)
        path = self.save("dino_alt.pth", {"teacher": t.state_dict(), "student": s.state_dict()})
        j = L.run_json(self, ["check", "--json", path], ok_codes=(0, 1))
        self.assertEqual(j["state_dict_path"], ["teacher"])
        self.assertIn((["student"], "student"),
                      [(a["path"], a["kind"]) for a in j["alternatives"]])

        m, e = net(seed=64), net(seed=65)
        path = self.save("ema_alt.pth", {"model": m.state_dict(), "model_ema": e.state_dict()})
        j = L.run_json(self, ["check", "--json", path], ok_codes=(0, 1))
        self.assertIn((["model_ema"], "ema"),
                      [(a["path"], a["kind"]) for a in j["alternatives"]])


if __name__ == "__main__":
    unittest.main()
