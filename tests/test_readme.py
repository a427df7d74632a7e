#!/usr/bin/python3
"""
test_readme.py - the README shows what the program prints, and the exit status is stated once.

  * Every README example block that starts with "$ ckpt ..." is run on the file it names,
    built here with torch as the example describes it (rsp-resnet-50-ckpt.pth: a training
    snapshot of torchvision's resnet50(num_classes=51) with 'model', 'optimizer' (SGD with
    momentum, after one step), 'lr_scheduler' (CosineAnnealingLR), 'epoch', 'max_accuracy' (a
    numpy float64) and 'config' (an argparse.Namespace)), and ckpt's output must equal the
    block's text exactly: every figure in it (sizes, counts) follows from the file's content.
  * The exit-status table of docs/CLI.md and the one `ckpt help` prints say the same, and no
    command's --help states exit statuses of its own.
"""

import os
import re
import subprocess
import sys
import tempfile
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
import ckpt_testlib as L  # noqa: E402


def build_training_snapshot(path):
    import argparse
    import numpy as np
    import torch
    import torchvision
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    model = torchvision.models.resnet50(num_classes=51)
    with torch.no_grad():  # trained BatchNorm statistics, not the initial 0 and 1
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.num_batches_tracked.fill_(1000)
    opt = torch.optim.SGD(model.parameters(), lr=0.001, momentum=0.9, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=300)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    sched.step()
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(),
                "lr_scheduler": sched.state_dict(), "epoch": 299,
                "max_accuracy": np.float64(0.9327),
                "config": argparse.Namespace(arch="resnet50", lr=0.001, epochs=300)}, path)


def build_moco_checkpoint(path):
    """What MoCo v2's main_moco.py saves: {'epoch', 'arch', 'state_dict', 'optimizer'}, the
    state dict of a DataParallel MoCo (moco/builder.py) with encoder_q and encoder_k, ResNet-50s
    whose fc is Sequential(Linear(2048, 2048), ReLU, Linear(2048, 128)), and the queue (4096
    long here, 65536 in the paper) with its pointer; the optimizer has the query encoder's
    parameters only."""
    import torch
    import torchvision
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(2)

    class MoCo(torch.nn.Module):
        def __init__(self, dim=128, K=4096):
            super().__init__()
            self.encoder_q = torchvision.models.resnet50(num_classes=dim)
            self.encoder_k = torchvision.models.resnet50(num_classes=dim)
            for enc in (self.encoder_q, self.encoder_k):
                mlp = enc.fc.weight.shape[1]
                enc.fc = torch.nn.Sequential(torch.nn.Linear(mlp, mlp), torch.nn.ReLU(), enc.fc)
            with torch.no_grad():
                for m in self.encoder_q.modules():
                    if isinstance(m, torch.nn.BatchNorm2d):
                        m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                        m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            self.encoder_k.load_state_dict(self.encoder_q.state_dict())
            queue = torch.nn.functional.normalize(torch.randn(dim, K, generator=g), dim=0)
            self.register_buffer("queue", queue)
            self.register_buffer("queue_ptr", torch.zeros(1, dtype=torch.long))

    model = torch.nn.DataParallel(MoCo())
    opt = torch.optim.SGD(model.module.encoder_q.parameters(), lr=0.03, momentum=0.9,
                          weight_decay=1e-4)
    torch.save({"epoch": 200, "arch": "resnet50", "state_dict": model.state_dict(),
                "optimizer": opt.state_dict()}, path)


BUILDERS = {"rsp-resnet-50-ckpt.pth": build_training_snapshot,
            "checkpoint_0199.pth.tar": build_moco_checkpoint}


def readme_examples():
    """(command line, expected output lines) for each ``` block that starts with '$ ckpt'."""
    with open(os.path.join(ROOT, "README.md")) as f:
        lines = f.read().split("\n")
    out, block = [], None
    for line in lines:
        if line.startswith("```"):
            if block is None:
                block = [] if line == "```" else ["(not shell)"]
            else:
                if block and block[0].startswith("$ ckpt "):
                    out.append((block[0][2:], block[1:]))
                block = None
        elif block is not None:
            block.append(line)
    return out


class Readme(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        L.require_bin()
        cls.tmp = tempfile.TemporaryDirectory()
        for name, build in BUILDERS.items():
            build(os.path.join(cls.tmp.name, name))

    @classmethod
    def tearDownClass(cls):
        cls.tmp.cleanup()

    def test_examples(self):
        examples = readme_examples()
        self.assertGreaterEqual(len(examples), 2)  # inspect and check at least
        for cmd, want in examples:
            with self.subTest(cmd=cmd):
                args = cmd.split()[1:]
                self.assertIn(args[1], BUILDERS, "no builder for the file of '%s'" % cmd)
                rc, out, err = L.run_ckpt(args, cwd=self.tmp.name, timeout=60)
                self.assertIn(rc, (0, 1), err)
                got = out.rstrip("\n").split("\n")
                self.assertEqual(got, want)

    def test_self_supervised_python(self):
        """The Python the README shows for the MoCo checkpoint, run as printed, loads exactly
        the query encoder's backbone."""
        import torch
        cmd, want = [e for e in readme_examples() if "checkpoint_0199" in e[0]][0]
        code = "\n".join(line[4:] for line in
                         "\n".join(want).split("To load it in Python:\n", 1)[1].split("\n")
                         if line.startswith("    "))
        ns = L.run_python(self, code, "README MoCo", base=self.tmp.name, timeout=120)
        sd = torch.load(os.path.join(self.tmp.name, "checkpoint_0199.pth.tar"),
                        map_location="cpu")["state_dict"]
        p = "module.encoder_q."
        got = ns["model"].state_dict()
        want_keys = [k[len(p):] for k in sd if k.startswith(p) and not k.startswith(p + "fc.")]
        self.assertEqual(sorted(got), sorted(want_keys + ["fc.weight", "fc.bias"]))
        for k in want_keys:
            self.assertTrue(torch.equal(got[k], sd[p + k]), k)
        # the README's next commands: extract writes the backbone alone, with torchvision's names
        out = os.path.join(self.tmp.name, "moco_r50.pth")
        rc, o, e = L.run_ckpt(["extract", "checkpoint_0199.pth.tar", "-o", out],
                              cwd=self.tmp.name, timeout=120)
        self.assertEqual(rc, 0, o + e)
        self.assertIn("without 'module.encoder_q.'; the backbone of torchvision.models.resnet50(): "
                      "loads with strict=False, 'fc.weight' and 'fc.bias' missing", o)
        import torchvision
        m = torchvision.models.resnet50()
        missing, unexpected = m.load_state_dict(torch.load(out, weights_only=True), strict=False)
        self.assertEqual((sorted(missing), unexpected), (["fc.bias", "fc.weight"], []))
        for k in want_keys:
            self.assertTrue(torch.equal(m.state_dict()[k], sd[p + k]), k)

    def test_exit_status_once(self):
        with open(os.path.join(ROOT, "docs", "CLI.md")) as f:
            doc = f.read()
        section = doc.split("## Exit status", 1)[1].split("\n## ", 1)[0]
        rows = re.findall(r"^\| ([012]) \| (.*) \|$", section, re.M)
        self.assertEqual([r[0] for r in rows], ["0", "1", "2"])
        rc, out, err = L.run_ckpt(["help"])
        self.assertEqual(rc, 0, err)
        help_text = out.split("Exit status:\n", 1)[1]
        flat = lambda s: " ".join(s.replace("`", "").replace("'", "").split())  # noqa: E731
        entries = re.split(r"^  ([012])  ", help_text, flags=re.M)[1:]
        got = dict(zip(entries[::2], (flat(e) for e in entries[1::2])))
        for status, meaning in rows:
            self.assertEqual(got.get(status), flat(meaning), "status %s" % status)
        # every command's --help points there and states nothing of its own
        for line in out.split("Run 'ckpt help")[0].split("\n"):
            m = re.match(r"^  (\w+) ", line)
            if not m:
                continue
            rc, h, err = L.run_ckpt([m.group(1), "--help"])
            self.assertEqual(rc, 0, err)
            self.assertEqual(re.findall(r"Exit status.*", h), ["Exit status: see 'ckpt help'."],
                             m.group(1))


if __name__ == "__main__":
    L.main("test_readme")
