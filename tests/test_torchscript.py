#!/usr/bin/python3
"""
test_torchscript.py - TorchScript archives (torch.jit.save) read as the state dict that
torch.jit.load(f).state_dict() returns (issue 11, item 2).

  * scripted and traced resnet18 and resnet50, a scripted .half() resnet18, and a small module
    with a non-persistent buffer (TorchScript keeps it in state_dict()), a bias-less layer, a
    shared child: `ckpt extract` writes a .pth whose keys, order, dtypes, _metadata and every
    tensor's bytes equal torch.jit.load(f).state_dict()'s; it loads with weights_only=True
    into the torchvision model with strict=True.
  * `ckpt check` passes, and the snippet it prints runs (after the `ckpt extract` it names);
    `ckpt inspect` says torchscript; `ckpt run` classifies the vectors.
  * Malformed archives exit 2 with one error line, never a crash: a missing code file, a
    __parameters__ line past the line limit, a list of too many names, a cyclic object tree.
"""

import os
import re
import sys
import zipfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import ckpt_testlib as L  # noqa: E402

import torch  # noqa: E402
import torchvision  # noqa: E402

TIMEOUT = 300.0


class Small(torch.nn.Module):
    """A non-persistent buffer, a layer without bias, a child shared under two names."""

    def __init__(self):
        super().__init__()
        self.register_buffer("scale", torch.full((3,), 2.0), persistent=False)
        self.lin = torch.nn.Linear(4, 3, bias=False)
        self.again = self.lin
        self.bn = torch.nn.BatchNorm1d(3)
        self.register_parameter("gain", torch.nn.Parameter(torch.randn(3)))

    def forward(self, x):
        return self.bn(self.lin(x) * self.scale) * self.gain + self.again(x)


def rewrite_zip(src, dst, drop=(), replace=None):
    """Copy archive src to dst, leaving out names ending in drop, replacing contents by name
    suffix."""
    replace = replace or {}
    with zipfile.ZipFile(src) as zi, zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as zo:
        for info in zi.infolist():
            if any(info.filename.endswith(d) for d in drop):
                continue
            data = zi.read(info.filename)
            for suffix, new in replace.items():
                if info.filename.endswith(suffix):
                    data = new
            zo.writestr(info.filename, data)


class TorchScriptTest(L.SavingCase):

    def extract_same(self, src, what, arch=None, num_classes=1000):
        want = torch.jit.load(src).state_dict()
        out = self.path("out.pth")
        rc, o, e = L.run_ckpt(["extract", src, "-o", out, "--force"] +
                              ([] if arch else ["--no-check"]), timeout=TIMEOUT)
        self.assertEqual(rc, 0, "%s: extract: %s%s" % (what, o, e))
        got = torch.load(out, weights_only=True)
        L.same_sd(self, got, want, what)
        if arch:
            m = getattr(torchvision.models, arch)(num_classes=num_classes)
            m.load_state_dict(got, strict=True)
        os.unlink(out)
        return want

    def test_resnets(self):
        torch.manual_seed(0)
        for arch in ("resnet18", "resnet50"):
            m = getattr(torchvision.models, arch)(num_classes=17).eval()
            with torch.no_grad():  # trained-looking statistics, not the initial 0 and 1
                for mod in m.modules():
                    if isinstance(mod, torch.nn.BatchNorm2d):
                        mod.running_mean.uniform_(-1, 1)
                        mod.running_var.uniform_(0.5, 2)
            for how in ("script", "trace"):
                what = "%s %s" % (arch, how)
                with self.subTest(what=what):
                    src = self.path("%s_%s.pt" % (arch, how))
                    sm = (torch.jit.script(m) if how == "script"
                          else torch.jit.trace(m, torch.zeros(1, 3, 32, 32)))
                    torch.jit.save(sm, src)
                    rc, o, e = L.run_ckpt(["check", src], timeout=TIMEOUT)
                    self.assertEqual(rc, 0, "%s: check: %s%s" % (what, o, e))
                    self.assertIn("torchvision.models.%s(num_classes=17)" % arch, o)
                    self.assertIn("TorchScript module 'torchvision.models.resnet.ResNet'", o)
                    self.assertNotIn("torch.load would import", e)  # __torch__ is not Python
                    self.extract_same(src, what, arch, 17)
                    rc, o, e = L.run_ckpt(["inspect", src], timeout=TIMEOUT)
                    self.assertEqual(rc, 0, e)
                    self.assertIn("torchscript", o.splitlines()[0])
                    self.assertIn("_modules", o)
                    os.unlink(src)

    def test_half(self):
        torch.manual_seed(1)
        m = torchvision.models.resnet18().half().eval()
        src = self.path("r18_half.pt")
        torch.jit.save(torch.jit.script(m), src)
        want = self.extract_same(src, "resnet18 half", "resnet18")
        self.assertEqual(want["conv1.weight"].dtype, torch.float16)  # what the test relies on

    def test_small_module(self):
        torch.manual_seed(2)
        sm = torch.jit.script(Small())
        src = self.path("small.pt")
        torch.jit.save(sm, src)
        want = self.extract_same(src, "Small")
        # torch's behaviour this test pins: the non-persistent buffer is kept, the shared
        # child listed under both names, a None bias left out
        self.assertIn("scale", want)
        self.assertIn("again.weight", want)
        self.assertNotIn("lin.bias", want)

    def test_snippet_and_run(self):
        src = self.path("snip.pt")
        torch.jit.save(torch.jit.script(torchvision.models.resnet18().eval()), src)
        rc, o, e = L.run_ckpt(["check", src], timeout=TIMEOUT)
        self.assertEqual(rc, 0, o + e)
        self.assertIn("ckpt extract", o)
        snippet = "\n".join(line[4:] for line in
                            o.split("To load it in Python:\n", 1)[1].splitlines()
                            if line.startswith("    "))
        # nothing in it loads the archive itself: no code of the file runs
        self.assertNotIn("torch.jit.load(", snippet)
        self.assertNotIn("torch.load(%r" % src, snippet)
        work = self.path("snip")
        os.makedirs(work, exist_ok=True)
        ns = L.run_python(self, snippet, "snip.pt", base=os.path.dirname(src))
        want = torch.jit.load(src).state_dict()
        got = ns["model"].state_dict()
        self.assertEqual(list(got), list(want))
        for key, t in want.items():
            self.assertTrue(torch.equal(got[key], t), key)
        # run gives the same classes as on the extracted plain weights
        from PIL import Image
        img = os.path.join(work, "img.png")
        Image.frombytes("RGB", (64, 48), bytes((i * 7) % 251 for i in range(64 * 48 * 3))).save(img)
        plain = self.path("snip_plain.pth")
        rc, o2, e2 = L.run_ckpt(["extract", src, "-o", plain], timeout=TIMEOUT)
        self.assertEqual(rc, 0, o2 + e2)
        outs = []
        for f in (src, plain):
            rc, o, e = L.run_ckpt(["run", "--json", f, img], timeout=TIMEOUT)
            L.check_no_crash(self, rc, o, e, "run", allowed=(0,))
            outs.append(o.replace(f, "FILE"))
        self.assertEqual(outs[0], outs[1])
        self.assertIn("img.png", outs[0])

    def test_frozen(self):
        src = self.path("frozen.pt")
        m = torch.jit.freeze(torch.jit.script(torchvision.models.resnet18().eval()))
        torch.jit.save(m, src)
        self.assertEqual(len(torch.jit.load(src).state_dict()), 0)  # what the test relies on
        rc, o, e = L.run_ckpt(["check", src], timeout=TIMEOUT)
        L.check_clean_error(self, rc, o, e, src, "frozen")
        self.assertIn("frozen (torch.jit.freeze)", e)

    def malformed(self, src, what, expect):
        for cmd in ("check", "extract", "tensors"):
            args = [cmd, src] + (["-o", self.path("bad_out.pth"), "--force"]
                                 if cmd == "extract" else [])
            rc, o, e = L.run_ckpt(args, timeout=60)
            L.check_no_crash(self, rc, o, e, "%s: %s" % (what, cmd), allowed=(2,))
            L.check_clean_error(self, rc, o, e, src, "%s: %s" % (what, cmd))
            self.assertIn(expect, e, what)

    def test_malformed(self):
        good = self.path("good.pt")
        torch.jit.save(torch.jit.script(torch.nn.Sequential(torch.nn.Linear(2, 3))), good)
        with zipfile.ZipFile(good) as z:
            names = z.namelist()
        lin = [n for n in names if re.search(r"/linear(/___torch_mangle_\d+)?\.py$", n)]
        self.assertEqual(len(lin), 1, names)  # the layout this test relies on
        lin = lin[0]
        bad = self.path("bad.pt")

        rewrite_zip(good, bad, drop=(lin,))
        self.malformed(bad, "missing code file", "no code file")

        long_line = (b"class Linear(Module):\n  __parameters__ = [" + b'"w", ' * 300000 +
                     b"]\n")
        rewrite_zip(good, bad, replace={lin: long_line})
        self.malformed(bad, "huge __parameters__ line", "a line of more than")

        many = b"class Linear(Module):\n  __parameters__ = [" + b'"w",' * 70000 + b"]\n"
        rewrite_zip(good, bad, replace={lin: many})
        self.malformed(bad, "too many names", "lists more than")

        unclosed = b'class Linear(Module):\n  __parameters__ = ["weight", "bias"\n'
        rewrite_zip(good, bad, replace={lin: unclosed})
        self.malformed(bad, "unclosed list", "without its ']'")

        absent = b'class Linear(Module):\n  __parameters__ = ["weight", "nope", ]\n'
        rewrite_zip(good, bad, replace={lin: absent})
        self.malformed(bad, "listed attribute absent", "no attribute 'nope'")

        # a module whose attribute is the module itself: GLOBAL __torch__ M, NEWOBJ, memo 1,
        # BUILD {'me': <memo 1>}
        pkl = (b"\x80\x02c__torch__\nM\nq\x00)\x81q\x01}q\x02X\x02\x00\x00\x00meq\x03h\x01sb.")
        code = b"class M(Module):\n  __parameters__ = []\n  __buffers__ = []\n  me : __torch__.M\n"
        with zipfile.ZipFile(bad, "w") as z:
            z.writestr("archive/data.pkl", pkl)
            z.writestr("archive/code/__torch__.py", code)
            z.writestr("archive/constants.pkl", b"\x80\x02).")
            z.writestr("archive/version", b"3\n")
        self.malformed(bad, "cycle", "contains itself")


if __name__ == "__main__":
    L.main("test_torchscript")
