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


BUILDERS = {"rsp-resnet-50-ckpt.pth": build_training_snapshot}


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
