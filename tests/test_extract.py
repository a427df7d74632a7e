#!/usr/bin/python3
"""
test_extract.py - `ckpt extract` (issue 4) against PyTorch 1.13 and the safetensors format.

  * Round trips for every torchvision ResNet and for every wrapper and container of the check
    suite: the .pth written loads with torch.load(weights_only=True), has the model's key order
    and the unwrapped _metadata, loads with strict=True, and every tensor equals the source bit
    for bit (ckpt diff agrees); the .safetensors written is read by a small independent parser
    (json + struct only) with the reference's layout rules, by ckpt (check, diff), and its
    tensors load strictly into the model.
  * --dtype float16/bfloat16/float32 equals torch's .half()/.bfloat16()/.float() bit for bit,
    NaN, infinities, subnormals and ties included, for contiguous and strided sources.
  * Every dtype torch 1.13 saves, 0-dim, empty and non-contiguous tensors, tied weights.
  * Every corpus file holding tensors: to safetensors (--no-check), back to .pth, the same
    SHA-256 per tensor as PyTorch computed (expected-torch-1.13.json); the corpus's
    .safetensors files read with the expected tensors.
  * Refusals: a state dict that would not load strictly (PyTorch's text shown, nothing
    written), no model to check against, an existing output, the input as output.
  * Faults: a folder that cannot be written, a full disk (a 1 MB tmpfs when mounting works, and
    a file size limit), kill -9 mid-write (only the temporary file remains), SIGINT (nothing).
  * ZIP64 records (CKPT_TEST_ZIP64_FROM), read back by Python's zipfile, torch and ckpt.

Fixtures are tiny (tensors are stride-0/stride-1 views of small storages, so each has real
values along its last dimension) and cached in $CKPT_FIXTURES/extract with a stamp; outputs go
to a temporary folder (in /dev/shm when there is room) and are deleted as the test goes.
"""

import collections
import hashlib
import json
import os
import pty
import resource
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import ckpt_testlib as L  # noqa: E402
import test_check as TC  # noqa: E402  (fixture helpers: wrap, strip, container, Net, ...)

FIX = os.path.join(L.CKPT_FIXTURES or os.path.join(tempfile.gettempdir(), "ckpt-fixtures"),
                   "extract")
TIMEOUT = 120.0

# ---- generator (everything up to "end of generator" feeds the stamp) -------------------------

GEN_VERSION = "2"

# every architecture once, with a wrapper, a container and a format of its own
ARCH_CASES = [
    ("resnet18", "bare", "", False),
    ("resnet34", "training", "module.", False),
    ("resnet50", "imagenet", "module.", True),
    ("resnet101", "lightning", "model.", False),
    ("resnet152", "bare", "_orig_mod.", False),
    ("resnext50_32x4d", "bare", "module._orig_mod.", True),
    ("resnext101_32x8d", "training", "", False),
    ("resnext101_64x4d", "bare", "", False),
    ("wide_resnet50_2", "training", "module.", False),
    ("wide_resnet101_2", "bare", "", True),
]
# then every wrapper and container on resnet18
WRAP_CASES = [("bare", w, False) for w in TC.WRAPPERS[1:]] + \
             [("training", w, False) for w in TC.WRAPPERS] + \
             [("imagenet", "module.", False), ("lightning", "model.", False),
              ("training", "module.", True)]


def values_sd(arch, nc, seed):
    """model.state_dict() of arch with values: 1-D tensors real, others a random vector along
    the last dimension broadcast over the rest (stride 0), num_batches_tracked distinct."""
    import torch
    model = TC.build(arch, nc)
    sd = model.state_dict()
    g = torch.Generator().manual_seed(seed)
    out = collections.OrderedDict()
    for i, (k, v) in enumerate(sd.items()):
        if v.dtype == torch.int64:
            out[k] = torch.tensor(i, dtype=torch.int64)
        elif v.dim() == 1:
            out[k] = torch.randn(v.shape, generator=g)
        else:
            out[k] = torch.randn(v.shape[-1], generator=g).expand(*v.shape)
    out._metadata = sd._metadata
    return out


def real_sd(arch, nc, seed):
    """The same with every tensor contiguous and random (files of the model's size)."""
    import torch
    sd = TC.build(arch, nc).state_dict()
    g = torch.Generator().manual_seed(seed)
    out = collections.OrderedDict()
    for i, (k, v) in enumerate(sd.items()):
        out[k] = torch.tensor(i) if v.dtype == torch.int64 else torch.randn(v.shape, generator=g)
    out._metadata = sd._metadata
    return out


def save(obj, name, legacy=False):
    import torch
    torch.save(obj, os.path.join(FIX, name), _use_new_zipfile_serialization=not legacy)
    return name


def all_dtypes():
    """Every dtype torch 1.13 saves, special shapes, views and tied tensors."""
    import torch
    g = torch.Generator().manual_seed(5)
    base = torch.randn(6, 8, generator=g)
    sd = collections.OrderedDict()
    sd["f32"] = base
    sd["f64"] = torch.randn(5, generator=g, dtype=torch.float64)
    sd["f16"] = torch.randn(7, generator=g).half()
    sd["bf16"] = torch.randn(3, 3, generator=g).bfloat16()
    sd["i64"] = torch.arange(-3, 9, dtype=torch.int64)
    sd["i32"] = torch.arange(-5, 5, dtype=torch.int32)
    sd["i16"] = torch.tensor([-32768, 0, 32767], dtype=torch.int16)
    sd["i8"] = torch.tensor([-128, 1, 127], dtype=torch.int8)
    sd["u8"] = torch.tensor([0, 7, 255], dtype=torch.uint8)
    sd["bool"] = torch.tensor([True, False, True])
    sd["c64"] = torch.randn(4, generator=g, dtype=torch.complex64)
    sd["scalar"] = torch.tensor(3.5)
    sd["nbt"] = torch.tensor(17)
    sd["empty"] = torch.empty(0)
    sd["empty2"] = torch.empty(0, 3)
    sd["t"] = base.t()                      # transposed view of f32's storage
    sd["slice"] = base[2:4]                 # offset view
    sd["step"] = base[:, ::3]               # strided view
    sd["tied"] = base                       # the same tensor again
    sd["bcast"] = torch.randn(1, 5, generator=g).expand(4, 5)
    sd["big_i"] = torch.tensor([2 ** 40, -2 ** 40, 2 ** 31, -2 ** 31 - 1])
    c128 = collections.OrderedDict(z=torch.randn(3, generator=g, dtype=torch.complex128))
    return sd, c128


def conversion_sd():
    """float32 bit patterns of every kind, contiguous and strided; float64/16 and bfloat16."""
    import numpy as np
    import torch
    rng = np.random.default_rng(1)
    bits = rng.integers(0, 2 ** 32, size=100000, dtype=np.uint64).astype(np.uint32)
    specials = np.array([0, 0x80000000, 0x7f800000, 0xff800000, 0x7fc00000, 0xffc00001,
                         0x7f800001, 1, 0x80000001, 0x33000000, 0x33000001, 0x337fffff,
                         0x38800000, 0x387fffff, 0x477fe000, 0x477fefff, 0x477ff000,
                         0x477ff001, 0x3f808000, 0x3f818000, 0x3f800001, 0x3f807fff,
                         0x7f7fffff, 0x00800000, 0x007fffff], dtype=np.uint32)
    ties16 = (rng.integers(0x38800000 >> 13, 0x477fe000 >> 13, size=4000).astype(np.uint32)
              << 13) | 0x1000
    ties_bf = (rng.integers(0, 0x7f80, size=4000).astype(np.uint32) << 16) | 0x8000
    sub16 = rng.integers(0x33000000, 0x38800000, size=10000, dtype=np.uint64).astype(np.uint32)
    allb = np.concatenate([bits, specials, ties16, ties_bf, sub16])
    allb = allb[:len(allb) - len(allb) % 10]
    f32 = torch.from_numpy(allb.view(np.float32).copy())
    sd = collections.OrderedDict()
    sd["contig"] = f32
    sd["strided"] = f32.view(-1, 10)[:, ::3]
    sd["transposed"] = f32[:100000].view(100, 1000).t()
    sd["bcast"] = f32[5:6].expand(40, 3)
    d = torch.from_numpy(rng.standard_normal(5001) * np.exp(rng.uniform(-60, 60, 5001)))
    d[3], d[4], d[5000], d[100] = float("nan"), float("inf"), float("nan"), 1 + 2 ** -8 + 2 ** -40
    sd["f64"] = d
    h = rng.integers(0, 2 ** 16, size=70000, dtype=np.uint64).astype(np.uint16).view(np.int16)
    sd["f16"] = torch.from_numpy(h.copy()).view(torch.float16)
    b = rng.integers(0, 2 ** 16, size=70000, dtype=np.uint64).astype(np.uint16).view(np.int16)
    sd["bf16"] = torch.from_numpy(b.copy()).view(torch.bfloat16)
    sd["nbt"] = torch.tensor(5)
    sd["i32"] = torch.arange(7, dtype=torch.int32)
    return sd


def generate():
    import torch
    TC.fast_init()
    if os.path.isdir(FIX):
        shutil.rmtree(FIX)
    os.makedirs(FIX)
    t0 = time.time()
    cases = []
    for i, (arch, kind, w, legacy) in enumerate(ARCH_CASES):
        nc = TC.CLASSES[arch]
        sd = values_sd(arch, nc, 100 + i)
        obj, path = TC.container(kind, TC.wrap(sd, w), arch)
        name = save(obj, "arch-%s.pt" % arch, legacy)
        cases.append(dict(name="arch/" + arch, file=name, arch=arch, nc=nc, path=path,
                          prefix=w, meta=True, group="arch"))
    for i, (kind, w, legacy) in enumerate(WRAP_CASES):
        sd = values_sd("resnet18", 10, 200 + i) if i % 4 else real_sd("resnet18", 10, 200 + i)
        if i == 3:
            sd = collections.OrderedDict(sd)  # no _metadata: num_batches_tracked semantics
        obj, path = TC.container(kind, TC.wrap(sd, w), "resnet18")
        name = save(obj, "wrap-%s-%s%s.pt" % (kind, w.replace(".", "_") or "none",
                                              "-legacy" if legacy else ""), legacy)
        cases.append(dict(name="wrap/%s/%s%s" % (kind, w or "none", "/legacy" if legacy else ""),
                          file=name, arch="resnet18", nc=10, path=path, prefix=w,
                          meta=i != 3, group="wrap"))
    # a state dict that would not load: resnet18 with a key deleted
    bad = values_sd("resnet18", 10, 7)
    del bad["layer1.0.conv1.weight"]
    save(bad, "bad-deleted.pt")
    model = TC.build("resnet18", 10)
    try:
        model.load_state_dict(bad, strict=True)
        bad_text = None
    except RuntimeError as e:
        bad_text = str(e)
    # a model no ResNet matches, its template, and a training checkpoint of it
    net = TC.Net.make(10)
    tmpl = net.state_dict()
    save(tmpl, "net-template.pt")
    g = torch.Generator().manual_seed(9)
    netsd = collections.OrderedDict((k, torch.randn(v.shape, generator=g) if
                                     v.is_floating_point() else v) for k, v in tmpl.items())
    netsd._metadata = tmpl._metadata
    # in another order than the model's, to see the model's order restored
    shuffled = collections.OrderedDict(reversed(list(TC.wrap(netsd, "module.").items())))
    shuffled._metadata = TC.wrap(netsd, "module.")._metadata
    save({"model": shuffled, "epoch": 3}, "net-train.pt")
    sd, c128 = all_dtypes()
    save(sd, "dtypes.pt")
    save(sd, "dtypes-legacy.pt", legacy=True)
    save(c128, "complex128.pt")
    save(conversion_sd(), "conversion.pt")
    with open(os.path.join(FIX, "cases.json"), "w") as f:
        json.dump({"cases": cases, "bad_text": bad_text,
                   "net_order": list(tmpl.keys())}, f)
    with open(os.path.join(FIX, ".stamp"), "w") as f:
        f.write(stamp_value())
    print("test_extract: generated %d cases in %.1f s" % (len(cases), time.time() - t0))

# ---- end of generator ------------------------------------------------------------------------


def stamp_value():
    with open(os.path.abspath(__file__), encoding="utf-8") as f:
        src = f.read()
    gen = src[src.index("# ---- generator"):src.index("# ---- end of generator")]
    with open(os.path.join(HERE, "test_check.py"), encoding="utf-8") as f:
        src = f.read()
    gen += src[src.index("# ---- generator"):src.index("# ---- end of generator")]
    import torch
    return hashlib.sha256((gen + torch.__version__).encode()).hexdigest()


DATA = None


def data():
    global DATA
    if DATA is None:
        stamp = os.path.join(FIX, ".stamp")
        fresh = False
        if os.path.exists(stamp):
            with open(stamp) as f:
                fresh = f.read() == stamp_value()
        if not fresh:
            generate()
        with open(os.path.join(FIX, "cases.json")) as f:
            DATA = json.load(f)
    return DATA


def fix(name):
    return os.path.join(FIX, name)


def out_dir():
    """A scratch folder: in /dev/shm when it has room (no disk writes for big outputs)."""
    base = None
    try:
        st = os.statvfs("/dev/shm")
        if st.f_bavail * st.f_frsize > (4 << 30):
            base = "/dev/shm"
    except OSError:
        pass
    return tempfile.mkdtemp(prefix="ckpt-extract-", dir=base)


def extract(tc, src, out, *args, codes=(0,), env=None):
    rc, so, se = L.run_ckpt(["extract", src, "-o", out] + list(args), timeout=TIMEOUT, env=env)
    L.check_no_crash(tc, rc, so, se, "ckpt extract %s -o %s %s" % (src, out, " ".join(args)))
    tc.assertIn(rc, codes, "extract %s -> %s %s: exit %r: %s" % (src, out, args, rc, se[-2000:]))
    return rc, so, se


def extract_json(tc, src, out, *args, codes=(0,)):
    rc, so, se = extract(tc, src, out, "--json", *args, codes=codes)
    return rc, json.loads(so), se


# ---- reference values and comparisons (torch and the standard library only) ----------------

def bits(t):
    """A tensor's elements as integers of its element size (bitwise comparison, NaN included)."""
    import torch
    t = t.detach().contiguous()
    if t.is_complex():
        t = torch.view_as_real(t).contiguous()
    if t.dtype == torch.bool:
        return t.view(torch.uint8)
    return t.view({1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}
                  [t.element_size()])


def same_bits(a, b):
    import torch
    return a.dtype == b.dtype and tuple(a.shape) == tuple(b.shape) and \
        torch.equal(bits(a), bits(b))


def file_sha256(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def reference(obj, path, prefix):
    sd = obj
    for p in path:
        sd = sd[p]
    return TC.strip(sd, prefix)


def meta_dict(sd):
    md = getattr(sd, "_metadata", None)
    return None if md is None else [(k, dict(v)) for k, v in md.items()]


ST_RANK = ["BOOL", "U8", "I8", "F8_E5M2", "F8_E4M3", "I16", "U16", "F16", "BF16", "I32",
           "U32", "F32", "C64", "F64", "I64", "U64"]
ST_SIZE = {"BOOL": 1, "U8": 1, "I8": 1, "I16": 2, "U16": 2, "F16": 2, "BF16": 2, "I32": 4,
           "U32": 4, "F32": 4, "C64": 8, "F64": 8, "I64": 8, "U64": 8}
ST_TORCH = {"F32": "float32", "F64": "float64", "F16": "float16", "BF16": "bfloat16",
            "I64": "int64", "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8",
            "BOOL": "bool", "C64": "complex64"}


def parse_safetensors(tc, path):
    """The independent reader: only json and struct. Checks the layout rules the reference
    writer follows and returns (metadata, [(name, dtype, shape, bytes)] in file order)."""
    with open(path, "rb") as f:
        blob = f.read()
    tc.assertGreaterEqual(len(blob), 8, path)
    (n,) = struct.unpack("<Q", blob[:8])
    tc.assertEqual(n % 8, 0, "%s: header length %d is not a multiple of 8" % (path, n))
    text = blob[8:8 + n].decode("utf-8")
    tc.assertTrue(text.startswith("{"), path)
    tc.assertLessEqual(len(text) - len(text.rstrip(" ")), 7, "%s: padded past 8" % path)
    tc.assertEqual(json.dumps(json.loads(text), separators=(",", ":"), ensure_ascii=False),
                   text.rstrip(" "), "%s: header is not compact JSON in this order" % path)
    hdr = json.loads(text, object_pairs_hook=collections.OrderedDict)
    meta = hdr.pop("__metadata__", None)
    if meta is not None:
        tc.assertEqual(list(json.loads(text))[0], "__metadata__", "__metadata__ comes first")
        tc.assertTrue(all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items()))
    data = blob[8 + n:]
    items, at = [], 0
    for name, info in hdr.items():
        tc.assertEqual(list(info), ["dtype", "shape", "data_offsets"], name)
        b, e = info["data_offsets"]
        tc.assertEqual(b, at, "%s: data is not back to back in header order" % name)
        numel = 1
        for d in info["shape"]:
            numel *= d
        tc.assertEqual(e - b, numel * ST_SIZE[info["dtype"]], name)
        tc.assertEqual((8 + n + b) % ST_SIZE[info["dtype"]], 0, "%s: misaligned" % name)
        items.append((name, info["dtype"], info["shape"], data[b:e]))
        at = e
    tc.assertEqual(at, len(data), "%s: bytes after the last tensor" % path)
    keys = [(-ST_RANK.index(dt), name.encode()) for name, dt, _, _ in items]
    tc.assertEqual(keys, sorted(keys), "%s: not in the reference's order" % path)
    return meta, items


def st_tensor(dtype, shape, raw):
    import torch
    t = torch.frombuffer(bytearray(raw), dtype=getattr(torch, ST_TORCH[dtype])) if raw else \
        torch.empty(0, dtype=getattr(torch, ST_TORCH[dtype]))
    return t.reshape(shape)


class RoundTrip(unittest.TestCase):
    """Every architecture and every wrapper/container, through .pth and .safetensors."""

    @classmethod
    def setUpClass(cls):
        L.require_bin()
        data()
        cls.tmp = out_dir()
        TC.fast_init()

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def check_pth(self, c, obj, model, ref):
        import torch
        out = os.path.join(self.tmp, "out.pth")
        rc, j, _ = extract_json(self, fix(c["file"]), out, "--force")
        self.assertEqual(j["state_dict_path"], c["path"], c["name"])
        self.assertEqual(j["prefix"], c["prefix"], c["name"])
        self.assertEqual((j["arch"], j["num_classes"]), (c["arch"], c["nc"]), c["name"])
        self.assertTrue(j["written"] and j["ok"] and j["checked"])
        self.assertEqual(j["bytes"], os.path.getsize(out))
        sd = torch.load(out, weights_only=True)
        self.assertIsInstance(sd, collections.OrderedDict)
        self.assertEqual(list(sd), list(model.state_dict()), c["name"] + ": key order")
        self.assertEqual(meta_dict(sd), meta_dict(ref), c["name"] + ": _metadata")
        model.load_state_dict(sd, strict=True)
        for k, v in ref.items():
            self.assertTrue(same_bits(sd[k], v), "%s: %s differs" % (c["name"], k))
            self.assertTrue(sd[k].is_contiguous() and not sd[k].requires_grad)
        rc, so, se = L.run_ckpt(["diff", fix(c["file"]), out, "--json"], timeout=TIMEOUT)
        self.assertEqual(rc, 0, "%s: ckpt diff: %s %s" % (c["name"], se, so[:500]))
        self.assertTrue(json.loads(so)["match"])
        rc, so, se = L.run_ckpt(["inspect", out], timeout=TIMEOUT)
        self.assertEqual(rc, 0, se)
        os.unlink(out)

    def check_safetensors(self, c, obj, model, ref, dtype=None):
        import torch
        out = os.path.join(self.tmp, "out.safetensors")
        args = ["--force"] + (["--dtype", dtype] if dtype else [])
        rc, j, _ = extract_json(self, fix(c["file"]), out, *args)
        meta, items = parse_safetensors(self, out)
        self.assertEqual(meta["format"], "pt")
        self.assertEqual(meta["source"], c["file"])
        self.assertEqual(meta["state_dict_key"], "/".join(c["path"]))
        self.assertEqual(meta["stripped_prefix"], c["prefix"])
        self.assertEqual((meta["arch"], meta["num_classes"]), (c["arch"], str(c["nc"])))
        self.assertEqual(sorted(n for n, _, _, _ in items), sorted(ref))
        got = collections.OrderedDict()
        for name, dt, shape, raw in items:
            want = ref[name]
            if dtype and want.is_floating_point():
                want = want.to(getattr(torch, dtype))
            got[name] = st_tensor(dt, shape, raw)
            self.assertTrue(same_bits(got[name], want), "%s: %s differs" % (c["name"], name))
        model.load_state_dict(got, strict=True)
        if not dtype:
            rc, so, se = L.run_ckpt(["diff", fix(c["file"]), out], timeout=TIMEOUT)
            self.assertEqual(rc, 0, "%s: ckpt diff: %s %s" % (c["name"], se, so[-500:]))
        rc, so, se = L.run_ckpt(["check", out, "--json"], timeout=TIMEOUT)
        self.assertEqual(rc, 0, se)
        self.assertEqual(json.loads(so)["arch"], c["arch"])
        rc, so, se = L.run_ckpt(["inspect", out, "--json"], timeout=TIMEOUT)
        self.assertEqual(rc, 0, se)
        self.assertEqual(json.loads(so)["format"], "safetensors")
        os.unlink(out)

    def run_group(self, group):
        import torch
        n = 0
        for c in data()["cases"]:
            if c["group"] != group:
                continue
            with self.subTest(case=c["name"]):
                obj = torch.load(fix(c["file"]))
                ref = reference(obj, c["path"], c["prefix"])
                model = TC.build(c["arch"], c["nc"])
                self.check_pth(c, obj, model, ref)
                # the big ones through bfloat16, which halves the bytes and checks conversion
                big = c["arch"] in ("resnet152", "resnext101_32x8d", "resnext101_64x4d",
                                    "wide_resnet50_2", "wide_resnet101_2")
                if group == "arch" or n % 2 == 0:
                    self.check_safetensors(c, obj, model, ref, "bfloat16" if big else None)
                del obj, ref, model
                n += 1
        self.assertGreater(n, 0)

    def test_archs(self):
        self.run_group("arch")

    def test_wrappers(self):
        self.run_group("wrap")


class Conversion(unittest.TestCase):
    """--dtype against torch's own conversions, bit for bit."""

    @classmethod
    def setUpClass(cls):
        L.require_bin()
        data()
        cls.tmp = out_dir()

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def test_dtypes(self):
        import torch
        src = torch.load(fix("conversion.pt"))
        fails = L.Failures(self, "conversion")
        for dt in ("float16", "bfloat16", "float32"):
            tdt = getattr(torch, dt)
            want = collections.OrderedDict((k, v.to(tdt) if v.is_floating_point() else v)
                                           for k, v in src.items())
            out = os.path.join(self.tmp, "c.pth")
            rc, j, _ = extract_json(self, fix("conversion.pt"), out, "--dtype", dt, "--no-check",
                                    "--force")
            self.assertEqual(j["converted"], sum(v.is_floating_point() and v.dtype != tdt
                                                 for v in src.values()))
            got = torch.load(out, weights_only=True)
            self.assertEqual(list(got), list(src))
            for k, v in want.items():
                fails.check(self.assertTrue, same_bits(got[k], v), "pth %s %s" % (dt, k))
            out = os.path.join(self.tmp, "c.safetensors")
            extract(self, fix("conversion.pt"), out, "--dtype", dt, "--no-check", "--force")
            meta, items = parse_safetensors(self, out)
            self.assertEqual(meta["dtype"], dt)
            for name, sdt, shape, raw in items:
                fails.check(self.assertTrue, same_bits(st_tensor(sdt, shape, raw), want[name]),
                            "safetensors %s %s" % (dt, name))
        fails.done()


class Dtypes(unittest.TestCase):
    """Every dtype, special shapes, views and tied tensors."""

    @classmethod
    def setUpClass(cls):
        L.require_bin()
        data()
        cls.tmp = out_dir()

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def test_pth(self):
        import torch
        for src in ("dtypes.pt", "dtypes-legacy.pt", "complex128.pt"):
            ref = torch.load(fix(src))
            out = os.path.join(self.tmp, "d.pth")
            rc, j, _ = extract_json(self, fix(src), out, "--no-check", "--force")
            got = torch.load(out, weights_only=True)
            self.assertEqual(list(got), list(ref))
            for k, v in ref.items():
                self.assertTrue(same_bits(got[k], v), "%s: %s" % (src, k))
                self.assertTrue(got[k].is_contiguous(), k)
            if src != "complex128.pt":
                # the same tensor twice shares one storage, as torch.save writes it; other
                # views of that storage are written contiguous on storages of their own
                ptr = lambda t: t.storage().data_ptr()  # noqa: E731
                self.assertEqual(ptr(got["tied"]), ptr(got["f32"]))
                self.assertNotEqual(ptr(got["t"]), ptr(got["f32"]))
                self.assertEqual(j["shared"], [{"key": "tied", "with": "f32"}])
                self.assertEqual(j["records"], len(ref) - 1)
        rc, so, se = L.run_ckpt(["tensors", out, "--json"])
        self.assertEqual(rc, 0, se)

    def test_views_differing_in_strides_only(self):
        """{w: W, wt: W.t()} with W square: one storage, offset and shape alike, strides not.
        Written as one record, wt would load as W: wrong weights that still load strictly."""
        import torch
        g = torch.Generator().manual_seed(10)
        w = torch.randn(4, 4, generator=g)
        src = os.path.join(self.tmp, "wt.pt")
        torch.save({"w": w, "wt": w.t(), "w2": w.view(2, 8)[:, :4]}, src)
        ref = torch.load(src)
        for ext in ("pth", "safetensors"):
            out = os.path.join(self.tmp, "wt." + ext)
            extract(self, src, out, "--no-check", "--force")
            if ext == "pth":
                got = torch.load(out, weights_only=True)
            else:
                got = {n: st_tensor(dt, shape, raw)
                       for n, dt, shape, raw in parse_safetensors(self, out)[1]}
            for k, v in ref.items():
                self.assertTrue(same_bits(got[k], v), "%s: %s" % (ext, k))
            self.assertFalse(torch.equal(got["wt"], got["w"]))

    def test_safetensors(self):
        import torch
        ref = torch.load(fix("dtypes.pt"))
        out = os.path.join(self.tmp, "d.safetensors")
        rc, j, se = extract_json(self, fix("dtypes.pt"), out, "--no-check", "--force")
        meta, items = parse_safetensors(self, out)
        self.assertEqual(meta["checked"], "no model")
        got = {n: st_tensor(dt, shape, raw) for n, dt, shape, raw in items}
        self.assertEqual(sorted(got), sorted(ref))
        for k, v in ref.items():
            self.assertTrue(same_bits(got[k], v), k)
        # tied and overlapping views are copies, named in a warning and in the JSON
        shared = {s["key"]: s["with"] for s in j["shared"]}
        self.assertEqual(shared, {"t": "f32", "slice": "f32", "step": "f32", "tied": "f32"})
        self.assertIn("'tied' shares memory with 'f32'", se)
        # ckpt reads it back: the same SHA-256s torch computes
        rc, so, se = L.run_ckpt(["tensors", out, "--json", "--sha256"])
        self.assertEqual(rc, 0, se)
        for t in json.loads(so)["tensors"]:
            self.assertEqual(t["sha256"], L.tensor_sha256(ref[t["path"][0]]), t["path"])
        # back to .pth: the same tensors
        back = os.path.join(self.tmp, "back.pth")
        extract(self, out, back, "--no-check", "--force")
        rc, so, se = L.run_ckpt(["diff", fix("dtypes.pt"), back])
        self.assertEqual(rc, 0, so + se)
        # complex128 has no safetensors dtype: refused, nothing written
        out2 = os.path.join(self.tmp, "z.safetensors")
        rc, so, se = extract(self, fix("complex128.pt"), out2, "--no-check", codes=(2,))
        self.assertIn("complex128", se)
        self.assertFalse(os.path.exists(out2))


class Corpus(unittest.TestCase):
    """Every corpus file holding tensors: to safetensors and back, the SHA-256s torch gave."""

    def test_corpus(self):
        L.require_bin()
        exp = L.load_expected(os.path.join(L.CORPUS, "expected-torch-1.13.json"))
        tmp = out_dir()
        fails = L.Failures(self, "corpus")
        n = 0
        try:
            for rel, e in sorted(exp.items()):
                if not e.get("tensors"):
                    continue
                n += 1
                by_path = {tuple(t["path"]): t for t in e["tensors"]}
                src = os.path.join(L.CORPUS, rel)
                st = os.path.join(tmp, "x.safetensors")
                pth = os.path.join(tmp, "x.pth")
                rc, j, _ = extract_json(self, src, st, "--no-check", "--force")
                extract(self, st, pth, "--no-check", "--force")
                base = tuple(j["state_dict_path"])
                for out in (st, pth):
                    rc, so, se = L.run_ckpt(["tensors", out, "--json", "--sha256"])
                    fails.check(self.assertEqual, rc, 0, "%s: %s" % (rel, se))
                    got = json.loads(so)["tensors"] if rc == 0 else []
                    fails.check(self.assertEqual, len(got), j["tensors"], rel)
                    for t in got:
                        want = by_path.get(base + (j["prefix"] + t["path"][0],))
                        fails.check(self.assertIsNotNone, want, "%s: %s" % (rel, t["path"]))
                        if want:
                            fails.check(self.assertEqual, (t["dtype"], t["shape"], t["sha256"]),
                                        (want["dtype"], want["shape"], want["sha256"]),
                                        "%s via %s: %s" % (rel, out[-11:], t["path"]))
                # and torch reads the .pth with the safe loader
                import torch
                sd = torch.load(pth, weights_only=True)
                for k, v in sd.items():
                    want = by_path[base + (j["prefix"] + k,)]
                    fails.check(self.assertEqual, L.tensor_sha256(v), want["sha256"], rel + k)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        fails.done()
        self.assertGreater(n, 50)

    def test_corpus_safetensors(self):
        exp = L.load_expected(os.path.join(L.CORPUS, "expected-torch-1.13.json"))
        files = [r for r in exp if r.endswith(".safetensors")]
        self.assertTrue(files)
        for rel in files:
            rc, so, se = L.run_ckpt(["tensors", os.path.join(L.CORPUS, rel), "--json",
                                     "--sha256"])
            self.assertEqual(rc, 0, se)
            got = [(t["path"], t["dtype"], t["shape"], t["sha256"])
                   for t in json.loads(so)["tensors"]]
            want = [(t["path"], t["dtype"], t["shape"], t["sha256"])
                    for t in exp[rel]["tensors"]]
            self.assertEqual(got, want, rel)


class Refusals(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        L.require_bin()
        data()
        cls.tmp = out_dir()

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def test_strict_load_fails(self):
        out = os.path.join(self.tmp, "bad.pth")
        args = ["--arch", "resnet18", "--num-classes", "10"]
        rc, so, se = extract(self, fix("bad-deleted.pt"), out, *args, codes=(1,))
        self.assertIn("RuntimeError: " + data()["bad_text"] + "\n", so)
        self.assertIn("--no-check", so)
        self.assertFalse(os.path.exists(out))
        self.assertEqual([f for f in os.listdir(self.tmp) if "bad" in f], [])
        rc, j, se = extract_json(self, fix("bad-deleted.pt"), out, *args, codes=(1,))
        self.assertFalse(j["written"] or j["ok"])
        self.assertEqual(j["error_text"], data()["bad_text"])
        self.assertEqual(j["missing"], ["layer1.0.conv1.weight"])
        rc, so, se = extract(self, fix("bad-deleted.pt"), out, *args, "--no-check")
        self.assertIn("--no-check", se)
        self.assertTrue(os.path.exists(out))

    def test_no_model(self):
        import torch
        out = os.path.join(self.tmp, "net.pth")
        rc, so, se = extract(self, fix("net-train.pt"), out, codes=(2,))
        L.check_clean_error(self, rc, so, se, fix("net-train.pt"))
        self.assertIn("--against", se)
        self.assertIn("--no-check", se)
        self.assertFalse(os.path.exists(out))
        # --against: the template's order and a strict load into the model
        rc, j, se = extract_json(self, fix("net-train.pt"), out, "--against",
                                 fix("net-template.pt"))
        self.assertEqual((j["prefix"], j["ok"]), ("module.", True))
        sd = torch.load(out, weights_only=True)
        self.assertEqual(list(sd), data()["net_order"])
        TC.Net.make(10).load_state_dict(sd, strict=True)
        # --no-check: the file's own order
        out2 = os.path.join(self.tmp, "net2.safetensors")
        rc, j, se = extract_json(self, fix("net-train.pt"), out2, "--no-check")
        self.assertEqual(j["ok"], None)
        self.assertFalse(j["checked"])
        src = torch.load(fix("net-train.pt"))["model"]
        back = os.path.join(self.tmp, "net2.pth")
        extract(self, out2, back, "--no-check")
        self.assertEqual(sorted(torch.load(back, weights_only=True)),
                         sorted(k[len("module."):] for k in src))

    def test_existing_output_and_input(self):
        src = fix("wrap-bare-module_.pt")
        out = os.path.join(self.tmp, "exists.pth")
        with open(out, "wb") as f:
            f.write(b"precious")
        rc, so, se = extract(self, src, out, codes=(2,))
        L.check_clean_error(self, rc, so, se, out)
        self.assertIn("--force", se)
        with open(out, "rb") as f:
            self.assertEqual(f.read(), b"precious")
        extract(self, src, out, "--force")
        self.assertGreater(os.path.getsize(out), 1000)
        # the input as output, by its path, another spelling, a hard link, a symlink: refused
        # even with --force, the input untouched
        own = os.path.join(self.tmp, "own.pt")
        shutil.copy(src, own)
        before = file_sha256(own)
        os.link(own, os.path.join(self.tmp, "hard.pt"))
        os.symlink(own, os.path.join(self.tmp, "soft.pt"))
        for target in (own, os.path.join(self.tmp, ".", "..", os.path.basename(self.tmp),
                                         "own.pt"),
                       os.path.join(self.tmp, "hard.pt"), os.path.join(self.tmp, "soft.pt")):
            rc, so, se = extract(self, own, target, "--force", codes=(2,))
            L.check_clean_error(self, rc, so, se, target)
            self.assertIn("input", se)
        self.assertEqual(file_sha256(own), before)
        self.assertEqual([f for f in os.listdir(self.tmp) if "ckpt-tmp" in f], [])

    def test_usage(self):
        src = fix("wrap-bare-module_.pt")
        for args, text in ((["extract", src], "-o OUT"),
                           (["extract", src, "-o", "x.npz"], "--format"),
                           (["extract", src, "-o", "x.pth", "--dtype", "int8"], "--dtype"),
                           (["extract", src, "-o", "x.pth", "--format", "onnx"], "onnx"),
                           (["extract", src, "-o", "x.pth", "--arch", "vgg"], "vgg")):
            rc, so, se = L.run_ckpt(args)
            self.assertEqual(rc, 2, args)
            self.assertIn(text, se)
            self.assertEqual(so, "")
        rc, so, se = L.run_ckpt(["extract", "--help"])
        self.assertEqual(rc, 0)
        self.assertIn("--no-check", so)
        rc, so, se = L.run_ckpt(["help"])
        self.assertIn("extract", so)
        # --format wins over the extension
        out = os.path.join(self.tmp, "weights.bin")
        extract(self, src, out, "--format", "safetensors")
        parse_safetensors(self, out)


def mount_tmpfs(path, opts):
    """Mount a small tmpfs (root only); False when this machine does not allow it."""
    if os.geteuid() != 0 or not shutil.which("mount"):
        return False
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", path],
                       capture_output=True)
    return r.returncode == 0


def umount(path):
    subprocess.run(["umount", path], capture_output=True)


class Faults(unittest.TestCase):
    """Nothing partial or damaged is ever left at the output's path."""

    @classmethod
    def setUpClass(cls):
        L.require_bin()
        data()
        cls.tmp = out_dir()
        cls.src = fix("arch-resnet18.pt")   # 47 MB of output

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def assert_nothing(self, folder, name):
        left = [f for f in os.listdir(folder) if name in f]
        self.assertEqual(left, [], "left behind in %s: %s" % (folder, left))

    def test_unwritable_folder(self):
        d = os.path.join(self.tmp, "ro")
        os.mkdir(d)
        mounted = mount_tmpfs(d, "ro,size=1m")
        if not mounted:
            os.chmod(d, 0o555)
            if os.access(d, os.W_OK):
                self.skipTest("root without mount: cannot make a folder unwritable")
        try:
            out = os.path.join(d, "m.pth")
            rc, so, se = extract(self, self.src, out, codes=(2,))
            L.check_clean_error(self, rc, so, se, out)
            self.assertIn("nothing written", se)
            self.assert_nothing(d, "m.pth")
        finally:
            if mounted:
                umount(d)
            os.chmod(d, 0o755)

    def test_disk_full_tmpfs(self):
        d = os.path.join(self.tmp, "small")
        os.mkdir(d)
        if not mount_tmpfs(d, "size=1m"):
            self.skipTest("cannot mount a tmpfs here (test_file_size_limit covers a full disk)")
        try:
            for fmt in ("pth", "safetensors"):
                out = os.path.join(d, "m." + fmt)
                rc, so, se = extract(self, self.src, out, codes=(2,))
                L.check_clean_error(self, rc, so, se, out)
                self.assertIn("no space left on device", se)
                self.assert_nothing(d, "m.")
        finally:
            umount(d)

    def test_file_size_limit(self):
        out = os.path.join(self.tmp, "limited.pth")

        def limit():
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            resource.setrlimit(resource.RLIMIT_FSIZE, (4 << 20, 4 << 20))

        p = subprocess.run([L.CKPT_BIN, "extract", self.src, "-o", out], preexec_fn=limit,
                           capture_output=True, text=True, timeout=TIMEOUT)
        L.check_clean_error(self, p.returncode, p.stdout, p.stderr, out)
        self.assertIn("too large", p.stderr)
        self.assert_nothing(self.tmp, "limited")

    def huge(self):
        """A source whose output is 1 GB: a broadcast tensor made contiguous."""
        import torch
        src = os.path.join(self.tmp, "huge.pt")
        if not os.path.exists(src):
            torch.save({"w": torch.ones(1).expand(256 << 20)}, src)
        return src

    def start_big(self, out):
        return subprocess.Popen([L.CKPT_BIN, "extract", self.huge(), "-o", out, "--no-check"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def wait_tmp(self, p, name):
        deadline = time.time() + 30
        while time.time() < deadline and p.poll() is None:
            tmps = [f for f in os.listdir(self.tmp) if f.startswith("." + name + ".ckpt-tmp-")]
            if tmps and os.path.getsize(os.path.join(self.tmp, tmps[0])) > 0:
                return tmps
            time.sleep(0.001)
        return []

    def test_kill_mid_write(self):
        out = os.path.join(self.tmp, "killed.safetensors")
        for attempt in range(5):
            p = self.start_big(out)
            tmps = self.wait_tmp(p, "killed.safetensors")
            time.sleep(0.02)
            p.kill()
            p.communicate()
            if p.returncode == -signal.SIGKILL:
                break
            os.unlink(out)  # it finished first: try again
        self.assertEqual(p.returncode, -signal.SIGKILL)
        self.assertTrue(tmps)
        self.assertFalse(os.path.exists(out), "a partial output was left")
        left = [f for f in os.listdir(self.tmp) if "killed" in f]
        self.assertEqual(len(left), 1)
        self.assertRegex(left[0], r"^\.killed\.safetensors\.ckpt-tmp-[A-Za-z0-9]{6}$")
        os.unlink(os.path.join(self.tmp, left[0]))

    def test_interrupt(self):
        out = os.path.join(self.tmp, "stopped.pth")
        for attempt in range(5):
            p = self.start_big(out)
            self.wait_tmp(p, "stopped.pth")
            p.send_signal(signal.SIGINT)
            so, se = p.communicate()
            if p.returncode == -signal.SIGINT:
                break
            os.unlink(out)
        self.assertEqual(p.returncode, -signal.SIGINT, se)
        self.assertIn(b"interrupted", se)
        self.assert_nothing(self.tmp, "stopped")

    def test_progress_bar(self):
        """On a terminal and only for outputs over 100 MB."""
        def run(out, small):
            src = self.src if small else self.huge()
            master, slave = pty.openpty()
            p = subprocess.Popen([L.CKPT_BIN, "extract", src, "-o", out, "--no-check"],
                                 stdout=subprocess.DEVNULL, stderr=slave,
                                 stdin=subprocess.DEVNULL)
            os.close(slave)
            chunks = []
            while True:
                try:
                    b = os.read(master, 65536)
                except OSError:
                    break
                if not b:
                    break
                chunks.append(b)
            p.wait()
            os.close(master)
            self.assertEqual(p.returncode, 0)
            os.unlink(out)
            return b"".join(chunks).decode("utf-8", "replace")

        self.assertIn("100%", run(os.path.join(self.tmp, "bar.pth"), small=False))
        self.assertNotIn("writing", run(os.path.join(self.tmp, "nobar.pth"), small=True))
        rc, so, se = L.run_ckpt(["extract", self.src, "-o", os.path.join(self.tmp, "p.pth")])
        self.assertNotIn("writing", se)


class Zip64(unittest.TestCase):
    """ZIP64 records. The test hook CKPT_TEST_ZIP64_FROM forces them on a small file, read back
    by Python's zipfile and by ckpt (torch's miniz refuses header offsets of 0xFFFFFFFF in an
    archive shorter than 4 GiB, so torch reads the real thing: CKPT_TEST_BIG=1 writes a 4.3 GB
    archive and loads it with torch)."""

    def check_layout(self, out, big_from):
        import zipfile
        with zipfile.ZipFile(out) as z:
            self.assertIsNone(z.testzip())          # every CRC-32 checked
            infos = z.infolist()
        root = os.path.splitext(os.path.basename(out))[0]
        self.assertEqual(infos[0].filename, root + "/data.pkl")
        self.assertEqual(infos[1].filename, root + "/byteorder")
        self.assertEqual(infos[-1].filename, root + "/version")
        with open(out, "rb") as f:
            f.seek(-98, os.SEEK_END)
            tail = f.read()
            # the ZIP64 end record, its locator, the end record
            self.assertEqual(tail[:4], b"PK\x06\x06")
            self.assertEqual(tail[56:60], b"PK\x06\x07")
            self.assertEqual(tail[76:80], b"PK\x05\x06")
            big = [i for i in infos if i.header_offset >= big_from or i.file_size >= big_from]
            for i in infos:
                f.seek(i.header_offset)
                h = f.read(30)
                n, x = struct.unpack("<HH", h[26:30])
                extra = f.read(n + x)[n:]
                self.assertEqual((i.header_offset + 30 + n + x) % 64, 0, i.filename)
                self.assertEqual(extra[:2] == b"\x01\x00", i in big, i.filename)
                if i.file_size:                           # the data descriptor after the data
                    f.seek(i.header_offset + 30 + n + x + i.file_size)
                    d = f.read(24)
                    self.assertEqual(d[:4], b"PK\x07\x08")
                    size = struct.unpack("<Q", d[8:16])[0] if i in big else \
                        struct.unpack("<I", d[8:12])[0]
                    self.assertEqual(size, i.file_size)
        return big

    def test_forced(self):
        import torch
        L.require_bin()
        data()
        tmp = out_dir()
        try:
            out = os.path.join(tmp, "z.pth")
            env = dict(L.RUN_ENV, CKPT_TEST_ZIP64_FROM="100000")
            c = next(c for c in data()["cases"] if c["name"] == "wrap/training/module.")
            extract(self, fix(c["file"]), out, env=env)
            self.assertGreater(len(self.check_layout(out, 100000)), 10)
            with open(out, "rb") as f:
                blob = f.read()
            self.assertEqual(struct.unpack("<I", blob[-6:-2])[0], 0xFFFFFFFF)
            rc, so, se = L.run_ckpt(["diff", fix(c["file"]), out])
            self.assertEqual(rc, 0, se)
            rc, so, se = L.run_ckpt(["check", out, "--json"])
            self.assertEqual(rc, 0, se)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    @unittest.skipUnless(os.environ.get("CKPT_TEST_BIG"), "CKPT_TEST_BIG=1 writes 4.3 GB")
    def test_real(self):
        import torch
        tmp = out_dir()
        try:
            src = os.path.join(tmp, "big-src.pt")
            sd = collections.OrderedDict([("a", torch.arange(5.)),
                                          ("big", torch.full((1,), 7, dtype=torch.uint8)
                                           .expand((1 << 32) + 4096)),
                                          ("b", torch.arange(3))])
            torch.save(sd, src)
            out = os.path.join(tmp, "big.pth")
            extract(self, src, out, "--no-check")
            big = self.check_layout(out, 0xFFFFFFFF)
            self.assertEqual([i.filename for i in big], ["big/data/1", "big/data/2", "big/version"])
            got = torch.load(out, weights_only=True)
            self.assertTrue(torch.equal(got["a"], sd["a"]) and torch.equal(got["b"], sd["b"]))
            self.assertEqual(got["big"].shape, sd["big"].shape)
            self.assertTrue(bool((got["big"] == 7).all()))
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    L.main("test_extract")
