#!/usr/bin/python3
"""
test_zero.py - DeepSpeed files and empty placeholders (issue 11, item 4).

  * A ZeRO-3 partition file, built as DeepSpeed's engine saves one (model.state_dict() after
    each parameter's .data became torch.empty(0), next to 'buffer_names', 'param_shapes',
    'ds_config', 'ds_version'): check, extract and run exit 2 naming the file's kind and
    zero_to_fp32.py, and never print a class count or a size mismatch.
  * The same placeholders without DeepSpeed's keys: exit 2 saying the weights are not there.
  * A ZeRO-2 mp_rank_00_model_states.pt ({'module': whole state dict, ...}) still passes, bit
    for bit; a state dict with one legitimately empty tensor is not taken for a placeholder.
"""

import collections
import os
import sys
import tempfile
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import ckpt_testlib as L  # noqa: E402

import torch  # noqa: E402
import torchvision  # noqa: E402


def zero3_module(model):
    """What model.state_dict() returns under ZeRO-3: parameters partitioned away."""
    for p in model.parameters():
        p.data = torch.empty(0, dtype=p.dtype)
    return model.state_dict()


class ZeroTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        L.require_bin()
        cls.tmp = tempfile.TemporaryDirectory(prefix="ckpt-zero-")

    @classmethod
    def tearDownClass(cls):
        cls.tmp.cleanup()

    def path(self, name):
        return os.path.join(self.tmp.name, name)

    def refused(self, path, words):
        for cmd in (["check", path], ["extract", path, "-o", self.path("x.safetensors")],
                    ["run", path, os.path.join(L.TEST_DATA, "vectors")]):
            rc, o, e = L.run_ckpt(cmd, timeout=60)
            L.check_no_crash(self, rc, o, e, " ".join(cmd), allowed=(2,))
            for w in words:
                self.assertIn(w, e, cmd)
            self.assertNotIn("num_classes", o + e, cmd)
            self.assertNotIn("size mismatch", o + e, cmd)
            self.assertFalse(os.path.exists(self.path("x.safetensors")))

    def test_zero3(self):
        for arch in ("resnet18", "resnet50"):
            m = getattr(torchvision.models, arch)().half()
            shapes = collections.OrderedDict((n, p.shape) for n, p in m.named_parameters())
            sd = zero3_module(m)
            self.assertTrue(all(sd[n].shape == (0,) for n in shapes))  # the premise
            src = self.path("zero_pp_rank_0_mp_rank_00_model_states.pt")
            torch.save({"module": sd, "buffer_names": [k for k in sd if k not in shapes],
                        "param_shapes": [shapes], "ds_config": {"zero_optimization":
                                                                {"stage": 3}},
                        "ds_version": "0.9.0", "global_steps": 10}, src)
            self.refused(src, ["DeepSpeed ZeRO-3", "zero_to_fp32.py",
                               "%d parameters of shape [0]" % len(shapes)])
            bare = self.path("bare.pt")
            torch.save(sd, bare)
            self.refused(bare, ["%d tensors of shape [0]" % len(shapes), "not in this file"])

    def test_zero2_and_one_empty(self):
        m = torchvision.models.resnet18()
        want = m.state_dict()
        src = self.path("mp_rank_00_model_states.pt")
        torch.save({"module": want, "buffer_names": [], "ds_version": "0.9.0"}, src)
        out = self.path("out.pth")
        rc, o, e = L.run_ckpt(["extract", src, "-o", out, "--force"], timeout=60)
        self.assertEqual(rc, 0, o + e)
        got = torch.load(out, weights_only=True)
        self.assertEqual(list(got), list(want))
        for k in want:
            self.assertEqual(L.tensor_bytes(got[k]), L.tensor_bytes(want[k]), k)
        odd = collections.OrderedDict(want)
        odd["extra"] = torch.empty(0)
        odd["extra2"] = torch.empty(0)
        src = self.path("odd.pth")
        torch.save(odd, src)
        rc, o, e = L.run_ckpt(["check", src], timeout=60)
        self.assertEqual(rc, 1, o + e)  # two unexpected keys, judged, not refused
        self.assertIn("extra", o)


if __name__ == "__main__":
    L.main("test_zero")
