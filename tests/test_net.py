"""
test_net.py - the inference engine against PyTorch, for all ten ResNets.

For every architecture: a torchvision model with random weights and randomised BatchNorm
statistics (running_mean ~ N(0, 0.1), running_var ~ U(0.5, 2), weight ~ U(0.5, 1.5), bias ~
N(0, 0.1)) in eval mode, saved as a checkpoint; PyTorch's logits and pooled features on a
fixed random input are the expected values. ckpt's (through the `test_net run` driver, both
backends) must be within 1e-4 * max(1, max |logit|) and give the same top-5 for every image.
Determinism: the dnnl backend gives the same bits for 1 and 2 threads, for a batch and for
its images run alone, and over --repeat runs.

The big architectures run at 10 classes on small inputs and are stored as float16/bfloat16
(ckpt reads any float dtype; PyTorch's expected values come from the same rounded weights),
which keeps the fixtures near 1.3 GB and generation at a few minutes, once: they are cached in
$CKPT_FIXTURES/net/ with a stamp per architecture. In a sanitizer build (or with
CKPT_TEST_ALL_ARCHS=0) the reference backend runs only two light architectures; the dnnl backend
always runs all ten.
"""

import glob
import os
import shutil
import subprocess
import sys
import tempfile
import unittest

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import ckpt_testlib as tl  # noqa: E402

GEN_VERSION = "net-fixtures 1"
# name, classes, stored dtype, input [batch, height, width], wrapped as a training checkpoint
ARCHS = [
    ("resnet18", 1000, "float32", (2, 224, 224), False),
    ("resnet34", 10, "float32", (2, 64, 64), False),
    ("resnet50", 1000, "float32", (2, 224, 224), True),
    ("resnet101", 10, "float16", (1, 64, 80), False),
    ("resnet152", 10, "float16", (1, 64, 64), False),
    ("resnext50_32x4d", 10, "float32", (2, 65, 47), False),
    ("resnext101_32x8d", 10, "float16", (1, 64, 64), False),
    ("resnext101_64x4d", 10, "bfloat16", (1, 48, 64), True),
    ("wide_resnet50_2", 10, "float16", (1, 64, 64), False),
    ("wide_resnet101_2", 10, "float16", (1, 57, 64), False),
]
SMALL = {"resnet34", "resnext50_32x4d"}  # the least work for the reference backend
TIMEOUT = float(os.environ.get("CKPT_NET_TIMEOUT", "900"))


def _find_test_net():
    env = os.environ.get("CKPT_TEST_NET")
    cands = [env] if env else []
    if tl.CKPT_BIN:
        cands.append(os.path.join(os.path.dirname(tl.CKPT_BIN), "tests", "test_net"))
    cands += sorted(glob.glob(os.path.join(HERE, "..", "build*", "tests", "test_net")),
                    key=os.path.getmtime, reverse=True)
    cands += sorted(glob.glob(os.path.join(HERE, "..", "build*", "test_net")),
                    key=os.path.getmtime, reverse=True)
    for c in cands:
        if c and os.path.isfile(c) and os.access(c, os.X_OK):
            return os.path.abspath(c)
    return None


TEST_NET = _find_test_net()


def _sanitized(path):
    """A sanitizer build (CI's Debug -O0 one): the plain C reference is ~20x slower there."""
    try:
        p = subprocess.run(["ldd", path], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        return b"libasan" in p.stdout or b"libubsan" in p.stdout
    except OSError:
        return False


# The reference backend runs every architecture, except in a sanitizer build where it runs
# SMALL only; CKPT_TEST_ALL_ARCHS=1 or 0 forces either.
ALL_ARCHS = os.environ.get("CKPT_TEST_ALL_ARCHS",
                           "0" if TEST_NET and _sanitized(TEST_NET) else "1") != "0"
NET_DIR = os.path.join(tl.CKPT_FIXTURES or os.path.join(HERE, "..", "build", "fixtures"), "net")


# ---- fixtures -----------------------------------------------------------------------------

def _randomise_bn(model, gen):
    import torch
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            c = m.num_features
            with torch.no_grad():
                m.running_mean.copy_(torch.randn(c, generator=gen) * 0.1)
                m.running_var.copy_(torch.rand(c, generator=gen) * 1.5 + 0.5)
                m.weight.copy_(torch.rand(c, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(c, generator=gen) * 0.1)
                m.num_batches_tracked.fill_(7)


def make_fixture(name, classes, dtype, shape, wrapped):
    """ARCH.pth, ARCH.input.npy, ARCH.logits.npy, ARCH.features.npy under NET_DIR."""
    import torch
    import torchvision
    stamp = os.path.join(NET_DIR, name + ".stamp")
    want = "%s %s %d %s %s %s\n" % (GEN_VERSION, name, classes, dtype, shape, wrapped)
    if os.path.exists(stamp):
        with open(stamp) as f:
            if f.read() == want:
                return
    os.makedirs(NET_DIR, exist_ok=True)
    seed = sum(map(ord, name))
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed + 1)
    model = getattr(torchvision.models, name)(num_classes=classes)
    _randomise_bn(model, gen)
    with torch.no_grad():  # a non-trivial fc bias too
        model.fc.bias.copy_(torch.randn(classes, generator=gen) * 0.1)
    sd = model.state_dict()
    dt = getattr(torch, dtype)
    sd = type(sd)((k, v.to(dt) if v.is_floating_point() else v) for k, v in sd.items())
    sd._metadata = model.state_dict()._metadata
    obj = {"model": sd, "epoch": 3, "config": {"arch": name}} if wrapped else sd
    torch.save(obj, os.path.join(NET_DIR, name + ".pth"))
    # Expected values from the same (rounded) weights in a float32 model.
    ref = getattr(torchvision.models, name)(num_classes=classes)
    ref.load_state_dict(sd)
    ref.eval()
    x = torch.randn(*(shape[0], 3, shape[1], shape[2]), generator=gen)
    feats = []
    hook = ref.avgpool.register_forward_hook(lambda m, i, o: feats.append(o.flatten(1)))
    torch.set_num_threads(2)
    with torch.no_grad():
        logits = ref(x)
    hook.remove()
    np.save(os.path.join(NET_DIR, name + ".input.npy"), x.numpy().astype(np.float32))
    np.save(os.path.join(NET_DIR, name + ".logits.npy"), logits.numpy().astype(np.float32))
    np.save(os.path.join(NET_DIR, name + ".features.npy"), feats[0].numpy().astype(np.float32))
    with open(stamp, "w") as f:
        f.write(want)


# ---- running the engine -------------------------------------------------------------------

def run_net(tc, name, classes, inp, backend, threads=2, extra=(), env=None, ckpt=None):
    tmp = tempfile.mkdtemp(prefix="ckpt-net-")
    try:
        out = os.path.join(tmp, "logits.npy")
        feat = os.path.join(tmp, "features.npy")
        args = [TEST_NET, "run", ckpt or os.path.join(NET_DIR, name + ".pth"), name,
                str(classes), inp, out, "--features", feat, "--backend", backend,
                "--threads", str(threads)]
        args += list(extra)
        p = subprocess.run(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           timeout=TIMEOUT, env=dict(tl.RUN_ENV, **(env or {})))
        tc.assertEqual(p.returncode, 0, "%s: %s" % (" ".join(args), p.stderr.decode()))
        return np.load(out), np.load(feat)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def rel_diff(a, b):
    return float(np.max(np.abs(a.astype(np.float64) - b))) / max(1.0, float(np.max(np.abs(b))))


def top5(x):
    return [list(np.argsort(-row, kind="stable")[:5]) for row in x]


class NetTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        if not TEST_NET:
            raise unittest.SkipTest("no test_net binary (build it; or set CKPT_TEST_NET)")
        for a in ARCHS:
            make_fixture(*a)

    def check_arch(self, name, classes, dtype, shape, wrapped, backend, env=None):
        inp = os.path.join(NET_DIR, name + ".input.npy")
        want = np.load(os.path.join(NET_DIR, name + ".logits.npy"))
        want_f = np.load(os.path.join(NET_DIR, name + ".features.npy"))
        got, got_f = run_net(self, name, classes, inp, backend, env=env)
        self.assertEqual(got.shape, want.shape)
        d, df = rel_diff(got, want), rel_diff(got_f, want_f)
        print("%-18s %-5s %-8s %dx%dx%d max|logit| %-9.3g logits rel diff %.2e, features %.2e"
              % (name, backend + ("/avx2" if env else ""), dtype, shape[0], shape[1], shape[2],
                 float(np.max(np.abs(want))), d, df))
        sys.stdout.flush()
        self.assertLessEqual(d, 1e-4, name)
        self.assertLessEqual(df, 1e-4, name)
        if classes >= 5:
            self.assertEqual(top5(got), top5(want), name)
        return got

    def maxpool_nan(self, backend):
        """NaN wins a max-pool window in torch (max_pool2d propagates it); -inf and +inf are
        ordinary values. The backend must give torch's bits."""
        import torch
        import torch.nn.functional as F
        p = subprocess.run([TEST_NET, "backends"], stdout=subprocess.PIPE, text=True)
        if backend not in p.stdout.split():
            self.skipTest("this build has no %s backend" % backend)
        g = torch.Generator().manual_seed(12)
        x = torch.randn(3, 9, 11, generator=g)
        x[0, 4, 5] = float("nan")      # one NaN inside a window
        x[0, 0, 0] = float("nan")      # at the padded corner
        x[1, 2:5, 2:5] = float("nan")  # whole windows of NaN
        x[1, 7, 9] = float("-inf")
        x[2, 3, 3] = float("inf")
        x[2, 6, 6] = float("nan")
        x[2, 6, 7] = float("inf")      # NaN beats +inf too
        want = F.max_pool2d(x[None], 3, 2, 1)[0].numpy()
        self.assertTrue(np.isnan(want).any())
        with tempfile.TemporaryDirectory() as d:
            inp, out = os.path.join(d, "x.npy"), os.path.join(d, "y.npy")
            np.save(inp, x.numpy())
            r = subprocess.run([TEST_NET, "maxpool", backend, inp, out],
                               capture_output=True, text=True)
            self.assertEqual(r.returncode, 0, r.stderr)
            got = np.load(out)
        self.assertEqual(got.shape, want.shape)
        np.testing.assert_array_equal(np.isnan(got), np.isnan(want), backend)
        ok = ~np.isnan(want)
        np.testing.assert_array_equal(got[ok], want[ok], backend)

    def test_maxpool_nan_ref(self):
        self.maxpool_nan("ref")

    # oneDNN 2.6's max-pool keeps a window's finite maximum over a NaN (measured: positions
    # where torch gives NaN come out finite). Expected to fail until net_dnnl.c handles NaN;
    # an unexpected success then says this mark can go.
    @unittest.expectedFailure
    def test_maxpool_nan_dnnl(self):
        self.maxpool_nan("dnnl")

    def test_dnnl_all_archs(self):
        p = subprocess.run([TEST_NET, "backends"], stdout=subprocess.PIPE, text=True)
        if "dnnl" not in p.stdout.split():
            self.skipTest("this build has no dnnl backend (CKPT_WITH_DNNL=OFF)")
        for a in ARCHS:
            with self.subTest(arch=a[0]):
                self.check_arch(*a, backend="dnnl")

    def test_dnnl_avx2(self):
        """oneDNN's AVX2 kernels (nChw8c, no Winograd): what machines without AVX-512 run."""
        p = subprocess.run([TEST_NET, "backends"], stdout=subprocess.PIPE, text=True)
        if "dnnl" not in p.stdout.split():
            self.skipTest("this build has no dnnl backend (CKPT_WITH_DNNL=OFF)")
        for a in ARCHS:
            if a[0] in ("resnet18", "resnext50_32x4d", "wide_resnet50_2"):
                with self.subTest(arch=a[0]):
                    self.check_arch(*a, backend="dnnl", env={"DNNL_MAX_CPU_ISA": "AVX2"})

    def test_ref_archs(self):
        for a in ARCHS:
            if a[0] in SMALL or ALL_ARCHS:
                with self.subTest(arch=a[0]):
                    self.check_arch(*a, backend="ref")

    def test_determinism(self):
        """Bits equal across threads 1/2, batch vs alone, repeats (dnnl: resnet50 at 224)."""
        name, classes = "resnet50", 1000
        p = subprocess.run([TEST_NET, "backends"], stdout=subprocess.PIPE, text=True)
        if "dnnl" not in p.stdout.split():
            self.skipTest("this build has no dnnl backend (CKPT_WITH_DNNL=OFF)")
        inp = os.path.join(NET_DIR, name + ".input.npy")
        x = np.load(inp)
        tmp = tempfile.mkdtemp(prefix="ckpt-net-")
        try:
            # a batch of 8: the two fixture images and six variations of them
            batch = np.concatenate([x, x[::-1] * 0.5, -x, x * 2.0]).astype(np.float32)
            bpath = os.path.join(tmp, "batch.npy")
            np.save(bpath, batch)
            b2, _ = run_net(self, name, classes, bpath, "dnnl", threads=2, extra=["--repeat", "3"])
            b1, _ = run_net(self, name, classes, bpath, "dnnl", threads=1)
            self.assertTrue(np.array_equal(b1.view(np.uint32), b2.view(np.uint32)),
                            "1 and 2 threads differ")
            for k in (0, 5, 7):
                one = os.path.join(tmp, "one%d.npy" % k)
                np.save(one, batch[k:k + 1])
                alone, _ = run_net(self, name, classes, one, "dnnl", threads=2)
                self.assertTrue(np.array_equal(alone.view(np.uint32), b2[k:k + 1].view(np.uint32)),
                                "image %d alone differs from its place in the batch" % k)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def test_prefix_and_sd_view(self):
        """A 'module.'-prefixed copy gives the same bits, by prefix and through a ckpt_sd."""
        import torch
        name, classes = "resnet34", 10
        inp = os.path.join(NET_DIR, name + ".input.npy")
        tmp = tempfile.mkdtemp(prefix="ckpt-net-")
        try:
            sd = torch.load(os.path.join(NET_DIR, name + ".pth"))
            meta = getattr(sd, "_metadata", None)
            sd = type(sd)(("module." + k, v) for k, v in sd.items())
            if meta is not None:
                sd._metadata = type(meta)((("module." + k).rstrip("."), v) for k, v in meta.items())
            path = os.path.join(tmp, "prefixed.pth")
            torch.save(sd, path)
            base, _ = run_net(self, name, classes, inp, "ref")
            for extra in (["--prefix", "module."], ["--prefix", "module.", "--via-sd"]):
                got, _ = run_net(self, name, classes, inp, "ref", extra=extra, ckpt=path)
                self.assertTrue(np.array_equal(got.view(np.uint32), base.view(np.uint32)), extra)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def test_determinism_ref(self):
        """The reference: 1 and 2 threads, on a light architecture with groups."""
        small = os.path.join(NET_DIR, "resnext50_32x4d.input.npy")
        r1, _ = run_net(self, "resnext50_32x4d", 10, small, "ref", threads=1)
        r2, _ = run_net(self, "resnext50_32x4d", 10, small, "ref", threads=2,
                        extra=["--repeat", "2"])
        self.assertTrue(np.array_equal(r1.view(np.uint32), r2.view(np.uint32)),
                        "ref: 1 and 2 threads differ")


if __name__ == "__main__":
    tl.main("test_net")
