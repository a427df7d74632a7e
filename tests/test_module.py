#!/usr/bin/python3
"""
test_module.py - whole pickled nn.Modules read as their state_dict() (issue 11, item 1).

  * torch.save(model) of all 10 torchvision ResNets (float32 and .half(), at the root, in a
    training dict as YOLOv5-cls writes it, in nn.DataParallel, at pickle protocols 1 and 2):
    `ckpt check` accepts each, `ckpt extract` writes a .pth whose keys, order, dtypes,
    _metadata and every tensor's bytes equal model.state_dict()'s (for DataParallel: the inner
    model's), and `ckpt diff` finds it identical to torch.save(model.state_dict()).
  * state_dict()'s own rules on a small module: None parameters and buffers left out,
    non-persistent buffers left out, a child set to None skipped, a shared child listed under
    both names, BatchNorm's _version 2 in _metadata.
  * The snippet goes through `ckpt extract`; no global is imported (the file would import
    torchvision's classes under torch.load).
  * Malformed modules exit 2 with a message, never a crash: a _parameters that is a list, a
    child that is an int, a cycle in _modules, nesting past the limit, a DAG of shared
    children that would list 2^40 keys, 300 references to one module of 4096 paths.
"""

import collections
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import ckpt_testlib as L  # noqa: E402

import torch  # noqa: E402
import torchvision  # noqa: E402

ARCHS = ["resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "resnext50_32x4d",
         "resnext101_32x8d", "resnext101_64x4d", "wide_resnet50_2", "wide_resnet101_2"]
TIMEOUT = 300.0


class Fake:
    """An object that pickles as a module would, with a __dict__ of our choosing."""

    def __init__(self, state):
        self.state = state

    def __reduce_ex__(self, proto):
        return (copyreg_newobj, (Fake,), self.state)


def copyreg_newobj(cls, *args):
    return cls.__new__(cls, *args)


copyreg_newobj.__module__ = "copyreg"
copyreg_newobj.__name__ = copyreg_newobj.__qualname__ = "__newobj__"


def fake_state(params=None, buffers=None, modules=None):
    return {"training": True,
            "_parameters": collections.OrderedDict() if params is None else params,
            "_buffers": collections.OrderedDict() if buffers is None else buffers,
            "_non_persistent_buffers_set": set(),
            "_modules": collections.OrderedDict() if modules is None else modules}


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, bias=False)   # bias None
        self.bn = torch.nn.BatchNorm2d(4)                   # _version 2
        self.shared = torch.nn.Linear(4, 2)
        self.again = self.shared                           # listed twice
        self.gone = torch.nn.Linear(2, 2)
        self.gone = None                                   # a None child
        self.register_buffer("scratch", torch.arange(3.0), persistent=False)
        self.register_buffer("kept", torch.arange(5, dtype=torch.int32))
        self.register_buffer("empty", None)
        self.register_parameter("nothing", None)
        self.seq = torch.nn.Sequential(torch.nn.ReLU(), torch.nn.LayerNorm(4))


class ModuleTest(L.SavingCase):

    def extract_same(self, src, want, what):
        out = self.path("out.pth")
        rc, o, e = L.run_ckpt(["extract", src, "-o", out, "--force"], timeout=TIMEOUT)
        self.assertEqual(rc, 0, "%s: extract: %s%s" % (what, o, e))
        L.same_sd(self, torch.load(out, weights_only=True), want, what)
        os.unlink(out)

    def diff_same(self, src, want, what):
        ref = self.path("ref.pth")
        torch.save(want, ref)
        rc, o, e = L.run_ckpt(["diff", src, ref], timeout=TIMEOUT)
        self.assertEqual(rc, 0, "%s: diff: %s%s" % (what, o, e))
        os.unlink(ref)

    def test_resnets(self):
        # every ResNet once, the variants in rotation; resnet18 below in all of them
        torch.manual_seed(0)
        for i, arch in enumerate(ARCHS):
            with self.subTest(arch=arch):
                m = getattr(torchvision.models, arch)(num_classes=10 + i)
                if i % 2:
                    m = m.half()
                want = m.state_dict()
                src = self.path(arch + ".pth")
                kind = i % 3
                if kind == 0:
                    torch.save(m, src)
                elif kind == 1:
                    torch.save({"model": m, "optimizer": None, "epoch": 3}, src)
                else:
                    torch.save(torch.nn.DataParallel(m), src)
                rc, o, e = L.run_ckpt(["check", src], timeout=TIMEOUT)
                self.assertEqual(rc, 0, "%s: check: %s%s" % (arch, o, e))
                self.assertIn("torchvision.models.%s(num_classes=%d)" % (arch, 10 + i), o)
                self.extract_same(src, want, arch)
                self.diff_same(src, want, arch)
                os.unlink(src)
                del m, want

    def test_resnet18_variants(self):
        torch.manual_seed(1)
        base = torchvision.models.resnet18()
        for half in (False, True):
            m = base.half() if half else base.float()
            want = m.state_dict()
            for wrap in ("root", "dict", "ema", "dataparallel", "dict_dataparallel"):
                for proto in (1, 2):
                    what = "resnet18 half=%s %s protocol %d" % (half, wrap, proto)
                    with self.subTest(what=what):
                        obj = {"root": m,
                               "dict": {"model": m, "optimizer": {}, "epoch": 1},
                               "ema": {"ema": m, "updates": 10},
                               "dataparallel": torch.nn.DataParallel(m),
                               "dict_dataparallel": {"model": torch.nn.DataParallel(m)},
                               }[wrap]
                        src = self.path("r18.pth")
                        torch.save(obj, src, pickle_protocol=proto)
                        self.extract_same(src, want, what)
                        os.unlink(src)

    def test_state_dict_rules(self):
        torch.manual_seed(2)
        net = Net()
        want = net.state_dict()
        self.assertIn("again.weight", want)  # the rule this test relies on
        src = self.path("net.pth")
        torch.save({"model": net}, src)
        out = self.path("net_out.pth")
        rc, o, e = L.run_ckpt(["extract", src, "-o", out, "--no-check", "--force"])
        self.assertEqual(rc, 0, o + e)
        L.same_sd(self, torch.load(out, weights_only=True), want, "Net")

    def test_snippet_and_no_import(self):
        src = self.path("snip.pth")
        torch.save(torchvision.models.resnet18(), src)
        rc, o, e = L.run_ckpt(["check", src])
        self.assertEqual(rc, 0, o + e)
        self.assertIn("ckpt extract", o)
        self.assertIn("torchvision.models.resnet.ResNet", o)
        self.assertNotIn("torch.load(%r" % src, o)  # the file itself: never
        self.assertNotIn("safetensors", o)          # not in Debian 12's python3
        # as printed, on torch 1.13: the extract command, then a weights_only load
        j = L.run_json(self, ["check", "--json", src])
        want = torch.load(src, weights_only=False).state_dict()
        L.same_sd(self, L.run_python(self, j["python"], src)["model"].state_dict(), want,
                "snippet")
        rc, o, e = L.run_ckpt(["run", src, os.path.join(L.TEST_DATA, "vectors")])
        self.assertNotIn("Traceback", e)

    def malformed(self, obj, what, expect):
        src = self.path("bad.pth")
        torch.save(obj, src)
        rc, o, e = L.run_ckpt(["check", src], timeout=60)
        L.check_no_crash(self, rc, o, e, what, allowed=(2,))
        self.assertIn(expect, e, what)
        os.unlink(src)

    def test_malformed(self):
        w = torch.nn.Parameter(torch.ones(2, 2))
        leaf = Fake(fake_state(params=collections.OrderedDict(weight=w)))
        self.malformed(Fake(dict(fake_state(modules={"a": leaf}), _parameters=[w])),
                       "_parameters a list", "_parameters, not a dict")
        self.malformed(Fake(fake_state(modules={"a": leaf, "b": 7})), "child an int",
                       "module 'b' is a int, not a pickled nn.Module")
        cyc = Fake(fake_state(params=collections.OrderedDict(weight=w)))
        cyc.state["_modules"]["self"] = cyc
        self.malformed(cyc, "cycle", "form a cycle")
        deep = leaf
        for _ in range(300):
            deep = Fake(fake_state(modules={"m": deep}))
        old = sys.getrecursionlimit()
        sys.setrecursionlimit(20000)
        try:
            self.malformed(deep, "deep", "deeper than")
        finally:
            sys.setrecursionlimit(old)
        dag = leaf
        for _ in range(40):
            dag = Fake(fake_state(modules={"x": dag, "y": dag}))
        self.malformed(dag, "2^40 keys", "more than")
        # many references to one module of 4096 paths: the budget is the file's, not each's
        small = leaf
        for _ in range(12):
            small = Fake(fake_state(modules={"x": small, "y": small}))
        self.malformed({"models": [small] * 300}, "300 x 4096 modules", "more than")


if __name__ == "__main__":
    L.main("test_module")
