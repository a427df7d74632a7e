#!/usr/bin/python3
"""
test_preprocess.py - ckpt decodes images as Pillow does and preprocesses them as torchvision
does, bit for bit (issue 5, "Images" and "Preprocessing"), and reads/writes .npy as numpy does.

Images are generated here with PIL (and, for what PIL cannot write -- 16-bit RGB, 2-bit grey,
Adam7 interlacing, short palettes -- with a small PNG writer below), then:
  * decode: `test_image decode` gives exactly np.array(Image.open(p).convert("RGB"));
  * resize: `test_image resize` gives exactly img.resize((w, h), Image.BILINEAR);
  * preprocess: `test_image preprocess` gives exactly torchvision's
    Compose([Resize(S), CenterCrop(C), ToTensor(), Normalize(ImageNet)]) as float32 bits;
  * damage: truncated and corrupted files are refused exactly when Pillow refuses them, and
    when Pillow accepts one, the pixels agree; hostile headers are refused with ELIMIT;
  * npy: the writer's bytes are np.save's; the reader takes versions 1.0/2.0/3.0 and refuses
    other dtypes and layouts with a message naming them.
The C side is tests/test_image.c run as a driver: $CKPT_TEST_IMAGE_BIN, else tests/test_image
next to $CKPT_BIN, else the newest build*/tests/test_image.

`test_preprocess.py --c-tables` prints the expected values embedded in test_image.c.
"""

import glob
import io
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import unittest
import zlib

import warnings

import numpy as np
from PIL import Image, ImageFile


HERE = os.path.dirname(os.path.abspath(__file__))
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
DRIVER_TIMEOUT = 300


def find_driver():
    env = os.environ.get("CKPT_TEST_IMAGE_BIN")
    if env:
        return os.path.abspath(env)
    cands = []
    bin_ = os.environ.get("CKPT_BIN")
    if bin_:
        cands.append(os.path.join(os.path.dirname(os.path.abspath(bin_)), "tests", "test_image"))
    cands += sorted(glob.glob(os.path.join(HERE, "..", "build*", "tests", "test_image")),
                    key=os.path.getmtime, reverse=True)
    for c in cands:
        if os.path.exists(c):
            return os.path.abspath(c)
    return None


DRIVER = find_driver()


def run_jobs(jobs, tmp):
    """Run the driver once over jobs (lists of strings); one result line per job."""
    path = os.path.join(tmp, "jobs-%d.txt" % len(os.listdir(tmp)))
    with open(path, "w") as f:
        for j in jobs:
            assert not any("\t" in str(a) or "\n" in str(a) for a in j)
            f.write("\t".join(str(a) for a in j) + "\n")
    env = dict(os.environ, ASAN_OPTIONS="detect_leaks=1:abort_on_error=0",
               UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1")
    p = subprocess.run([DRIVER, "batch", path], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       timeout=DRIVER_TIMEOUT, env=env, text=True)
    if p.returncode != 0:
        raise AssertionError("driver exited with %d\n%s" % (p.returncode, p.stderr[-4000:]))
    lines = p.stdout.splitlines()
    if len(lines) != len(jobs):
        raise AssertionError("driver answered %d of %d jobs\n%s" %
                             (len(lines), len(jobs), p.stderr[-4000:]))
    return lines


def read_ppm(path):
    with open(path, "rb") as f:
        data = f.read()
    parts = data.split(b"\n", 3)
    assert parts[0] == b"P6" and parts[2] == b"255", path
    w, h = (int(v) for v in parts[1].split())
    return np.frombuffer(parts[3], dtype=np.uint8).reshape(h, w, 3)


# ---- a PNG writer for what PIL cannot write -------------------------------------------------

ADAM7 = [(0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2),
         (0, 1, 1, 2)]   # (x0, y0, dx, dy)
CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}


def chunk(kind, data):
    return (struct.pack(">I", len(data)) + kind + data +
            struct.pack(">I", zlib.crc32(kind + data) & 0xffffffff))


def pack_rows(samples, bd):
    """samples: (h, w, c) ints -> list of packed row bytes."""
    rows = []
    for r in samples:
        flat = r.reshape(-1).astype(np.int64)
        if bd == 16:
            rows.append(flat.astype(">u2").tobytes())
        elif bd == 8:
            rows.append(flat.astype(np.uint8).tobytes())
        else:
            per = 8 // bd
            pad = (-len(flat)) % per
            flat = np.concatenate([flat, np.zeros(pad, np.int64)]).reshape(-1, per)
            shifts = np.array([8 - bd * (i + 1) for i in range(per)])
            rows.append((flat << shifts).sum(axis=1).astype(np.uint8).tobytes())
    return rows


def filter_rows(rows, bpp, seed):
    """Apply PNG filters 0-4 in turn (starting at seed) so that every unfilter path runs."""
    out, prev = [], bytes(len(rows[0])) if rows else b""
    for i, row in enumerate(rows):
        ft = (i + seed) % 5
        cur = np.frombuffer(row, np.uint8).astype(np.int64)
        up = np.frombuffer(prev, np.uint8).astype(np.int64)
        res = np.zeros_like(cur)
        for x in range(len(cur)):
            a = cur[x - bpp] if x >= bpp else 0
            b = up[x]
            c = up[x - bpp] if x >= bpp else 0
            if ft == 0:
                pred = 0
            elif ft == 1:
                pred = a
            elif ft == 2:
                pred = b
            elif ft == 3:
                pred = (a + b) // 2
            else:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                pred = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
            res[x] = (cur[x] - pred) & 0xff
        out.append(bytes([ft]) + res.astype(np.uint8).tobytes())
        prev = row
    return out


def make_png(samples, bd, ct, interlace=False, plte=None, trns=None, extra=b"", split=1,
             after_idat=b""):
    h, w = samples.shape[:2]
    c = CHANNELS[ct]
    bpp = max(1, c * bd // 8)
    raw = b""
    if interlace:
        for p, (x0, y0, dx, dy) in enumerate(ADAM7):
            sub = samples[y0::dy, x0::dx]
            if sub.shape[0] and sub.shape[1]:
                raw += b"".join(filter_rows(pack_rows(sub, bd), bpp, p))
    else:
        raw = b"".join(filter_rows(pack_rows(samples, bd), bpp, 0))
    z = zlib.compress(raw, 9)
    ihdr = struct.pack(">IIBBBBB", w, h, bd, ct, 0, 0, 1 if interlace else 0)
    out = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + extra
    if plte is not None:
        out += chunk(b"PLTE", bytes(plte))
    if trns is not None:
        out += chunk(b"tRNS", bytes(trns))
    step = -(-len(z) // split)
    for i in range(0, len(z), step):
        out += chunk(b"IDAT", z[i:i + step])
    return out + after_idat + chunk(b"IEND", b"")


# ---- the images ---------------------------------------------------------------------------

def photo(w, h, seed):
    """Something like a photograph: smooth gradients, edges and noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    img = np.empty((h, w, 3))
    for c in range(3):
        fx, fy = rng.uniform(0.5, 6, 2)
        ph = rng.uniform(0, 6.28)
        img[..., c] = 128 + 90 * (np.sin(fx * 6.28 * x / max(w, 1) + ph) *
                                  np.cos(fy * 6.28 * y / max(h, 1)))
    img[(x // max(w // 5, 1) + y // max(h // 4, 1)) % 2 == 0] += 30
    img += rng.normal(0, 12, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def build_images(d):
    """Write the test images into d; returns [(name, path)]."""
    imgs = []

    def add(name, data=None, pil=None, **save):
        p = os.path.join(d, name)
        if pil is not None:
            pil.save(p, **save)
        else:
            with open(p, "wb") as f:
                f.write(data)
        imgs.append((name, p))

    rgb_sizes = [(224, 224), (256, 256), (255, 257), (500, 375), (375, 500), (4000, 255),
                 (255, 4000), (100, 80), (1, 1), (1, 300), (300, 1), (7, 5), (341, 256),
                 (640, 480), (257, 256), (232, 231), (1023, 767)]
    for i, (w, h) in enumerate(rgb_sizes):
        add("rgb_%dx%d.png" % (w, h), pil=Image.fromarray(photo(w, h, i)))
    jpeg_cases = [((640, 480), dict(quality=95)), ((333, 251), dict(quality=75)),
                  ((500, 375), dict(quality=50, subsampling=0)),
                  ((257, 199), dict(quality=85, subsampling=1)),
                  ((600, 401), dict(quality=90, progressive=True)),
                  ((300, 300), dict(quality=80, optimize=True)),
                  ((31, 17), dict(quality=70)), ((1200, 900), dict(quality=92)),
                  ((224, 224), dict(quality=100, subsampling=0)),
                  ((200, 150), dict(quality=60, progressive=True, subsampling=0))]
    for i, ((w, h), opts) in enumerate(jpeg_cases):
        add("rgb_%dx%d_%d.jpg" % (w, h, i), pil=Image.fromarray(photo(w, h, 100 + i)), **opts)
    base = Image.fromarray(photo(300, 260, 7))
    add("markers.jpg", pil=base, quality=85, comment=b"a comment", icc_profile=b"\0" * 3000,
        exif=b"Exif\0\0II*\0\x08\0\0\0\0\0\0\0\0\0")
    add("grey.jpg", pil=base.convert("L"), quality=85)
    add("grey_prog.jpg", pil=base.convert("L"), quality=85, progressive=True)
    add("cmyk.jpg", pil=base.convert("CMYK"), quality=90)
    cmyk = np.array(base.convert("CMYK"))
    cmyk[..., 3] = photo(300, 260, 8)[..., 0]    # a real black channel
    add("cmyk_k.jpg", pil=Image.fromarray(cmyk, "CMYK"), quality=90)
    add("grey.png", pil=base.convert("L"))
    add("la.png", pil=base.convert("LA"))
    rgba = np.dstack([photo(300, 260, 7), photo(300, 260, 9)[..., :1]])
    add("rgba.png", pil=Image.fromarray(rgba, "RGBA"))
    add("bilevel.png", pil=base.convert("1"))
    pal = base.convert("P", palette=Image.ADAPTIVE, colors=200)
    add("palette.png", pil=pal)
    add("palette_trns.png", pil=pal, transparency=3)
    pal_a = Image.fromarray(rgba, "RGBA").convert("P", palette=Image.ADAPTIVE, colors=64)
    add("palette_trns_bytes.png", pil=pal_a, transparency=bytes(range(0, 256, 4)))
    add("palette16.png", pil=base.convert("P", palette=Image.ADAPTIVE, colors=16))
    add("palette4.png", pil=base.convert("P", palette=Image.ADAPTIVE, colors=4))
    add("palette2.png", pil=base.convert("P", palette=Image.ADAPTIVE, colors=2))
    g16 = (np.array(base.convert("L")).astype(np.uint32) * 257).astype(np.uint16)
    g16[:40] //= 256                              # some values below 255, which survive
    add("grey16.png", pil=Image.fromarray(g16))   # mode I;16: 16-bit grey PNG
    add("grey_trns.png", pil=base.convert("L"), transparency=17)
    add("rgb_trns.png", pil=base, transparency=(1, 2, 3))

    rng = np.random.default_rng(42)
    s16 = rng.integers(0, 65536, (37, 45, 4))
    s8 = rng.integers(0, 256, (37, 45, 4))
    add("rgb16.png", make_png(s16[..., :3], 16, 2))
    add("rgba16.png", make_png(s16, 16, 6))
    add("la16.png", make_png(s16[..., :2], 16, 4))
    add("grey16_raw.png", make_png(s16[..., :1], 16, 0))
    add("grey2.png", make_png(s8[..., :1] % 4, 2, 0))
    add("grey4.png", make_png(s8[..., :1] % 16, 4, 0))
    add("grey1.png", make_png(s8[..., :1] % 2, 1, 0))
    add("rgb_adam7.png", make_png(s8[..., :3], 8, 2, interlace=True))
    add("rgba16_adam7.png", make_png(s16, 16, 6, interlace=True))
    add("grey2_adam7.png", make_png(s8[..., :1] % 4, 2, 0, interlace=True))
    for (w, h) in [(1, 1), (1, 9), (9, 1), (2, 2), (5, 3), (3, 5)]:
        add("adam7_%dx%d.png" % (w, h), make_png(s8[:h, :w, :3], 8, 2, interlace=True))
    # A palette shorter than the indexes used: Pillow gives grey (i, i, i) past its end.
    add("palette_short.png", make_png(s8[..., :1] % 16, 4, 3, plte=[10, 20, 30, 200, 100, 50]))
    add("palette_short8.png", make_png(s8[..., :1], 8, 3, plte=list(range(30))))
    add("palette_adam7.png", make_png(s8[..., :1] % 4, 2, 3, interlace=True,
                                      plte=[255, 0, 0, 0, 255, 0, 0, 0, 255, 9, 9, 9],
                                      trns=[0, 128]))
    ext = (chunk(b"gAMA", struct.pack(">I", 45455)) + chunk(b"tEXt", b"Comment\0hello") +
           chunk(b"iCCP", b"fake\0\0" + zlib.compress(b"not a profile")) +
           chunk(b"sRGB", b"\0") + chunk(b"prVt", b"private") + chunk(b"ab1_", b"digits"))
    add("ancillary.png", make_png(s8[..., :3], 8, 2, extra=ext, split=5,
                                  after_idat=chunk(b"tEXt", b"After\0idat")))
    return imgs


# ---- references ---------------------------------------------------------------------------

def pil_rgb(path_or_bytes):
    src = io.BytesIO(path_or_bytes) if isinstance(path_or_bytes, bytes) else path_or_bytes
    with Image.open(src) as im:
        mode = im.mode
        return np.array(im.convert("RGB")), mode


def tv_tensor(path, size, crop):
    from torchvision import transforms as T
    t = T.Compose([T.Resize(size), T.CenterCrop(crop), T.ToTensor(), T.Normalize(MEAN, STD)])
    with Image.open(path) as im:
        return t(im.convert("RGB")).numpy()


def tv_uint8(path, size, crop):
    """The same pipeline stopped before ToTensor, to say where a mismatch starts."""
    from torchvision import transforms as T
    t = T.Compose([T.Resize(size), T.CenterCrop(crop)])
    with Image.open(path) as im:
        return np.array(t(im.convert("RGB")))


def load_npy(path):
    return np.load(path, allow_pickle=False)


class Base(unittest.TestCase):
    tmp = None
    images = None

    @classmethod
    def setUpClass(cls):
        warnings.filterwarnings("ignore", message="Palette images with Transparency")
        if not DRIVER:
            raise AssertionError("test_image driver not found: set CKPT_TEST_IMAGE_BIN")
        if Base.tmp is None:
            Base.tmp = tempfile.mkdtemp(prefix="ckpt-preprocess-")
            Base.images = build_images(os.path.join(Base.tmp))


def tearDownModule():
    if Base.tmp:
        shutil.rmtree(Base.tmp, ignore_errors=True)


class Decode(Base):
    def test_decode_equals_pillow(self):
        jobs, outs = [], []
        for name, path in self.images:
            out = path + ".ppm"
            jobs.append(["decode", path, out])
            outs.append(out)
        res = run_jobs(jobs, self.tmp)
        n = 0
        for (name, path), out, line in zip(self.images, outs, res):
            ref, mode = pil_rgb(path)
            with self.subTest(image=name):
                self.assertTrue(line.startswith("ok "), "%s: %s" % (name, line))
                fmt, cmode, w, h = line.split()[1:]
                self.assertEqual(cmode, mode, name)
                self.assertEqual((int(h), int(w)), ref.shape[:2], name)
                got = read_ppm(out)
                diff = np.count_nonzero(got != ref)
                self.assertEqual(diff, 0, "%s: %d bytes differ from Pillow" % (name, diff))
                n += 1
        print("decode: %d images identical to Pillow" % n, file=sys.stderr)


class Resize(Base):
    def test_resize_equals_pillow(self):
        cases = [("rgb_500x375.png", (224, 224)), ("rgb_500x375.png", (1000, 750)),
                 ("rgb_500x375.png", (500, 100)), ("rgb_500x375.png", (37, 375)),
                 ("rgb_4000x255.png", (3, 1000)), ("rgb_4000x255.png", (4016, 255)),
                 ("rgb_255x4000.png", (16, 251)), ("rgb_7x5.png", (700, 3)),
                 ("rgb_1x1.png", (5, 7)), ("rgb_1x300.png", (1, 1)),
                 ("rgb_640x480_0.jpg", (640, 480)), ("rgb_333x251_1.jpg", (171, 129)),
                 ("rgb_1023x767.png", (1, 767)), ("rgb_1023x767.png", (2047, 1535)),
                 ("grey16.png", (299, 261)), ("palette_short.png", (90, 70))]
        paths = dict(self.images)
        jobs = []
        for i, (name, (w, h)) in enumerate(cases):
            jobs.append(["resize", paths[name], w, h, os.path.join(self.tmp, "resize%d.ppm" % i)])
        res = run_jobs(jobs, self.tmp)
        for i, ((name, (w, h)), line) in enumerate(zip(cases, res)):
            with self.subTest(image=name, size=(w, h)):
                self.assertTrue(line.startswith("ok"), line)
                with Image.open(paths[name]) as im:
                    ref = np.array(im.convert("RGB").resize((w, h), Image.BILINEAR))
                got = read_ppm(jobs[i][4])
                self.assertEqual(got.shape, ref.shape)
                diff = np.count_nonzero(got != ref)
                self.assertEqual(diff, 0, "%d bytes differ from PIL's resize" % diff)


class Preprocess(Base):
    def test_preprocess_equals_torchvision(self):
        cases = []
        for name, path in self.images:
            cases.append((name, path, 256, 224))
        for name in ["rgb_500x375.png", "rgb_341x256.png", "rgb_640x480_0.jpg", "rgb_4000x255.png",
                     "rgb_232x231.png", "cmyk_k.jpg", "palette.png"]:
            cases.append((name, dict(self.images)[name], 232, 224))
        for name in ["rgb_500x375.png", "rgb_100x80.png", "rgb_255x4000.png", "grey.jpg",
                     "rgb_7x5.png"]:
            cases.append((name, dict(self.images)[name], 200, 224))   # padding
            cases.append((name, dict(self.images)[name], 117, 225))   # odd sizes, padding
        cases.append(("rgb_256x256.png", dict(self.images)["rgb_256x256.png"], 256, 256))
        cases.append(("rgb_1023x767.png", dict(self.images)["rgb_1023x767.png"], 480, 299))
        jobs = [["preprocess", p, s, c, os.path.join(self.tmp, "pre%d.npy" % i)]
                for i, (n, p, s, c) in enumerate(cases)]
        res = run_jobs(jobs, self.tmp)
        exact = 0
        for (name, path, s, c), job, line in zip(cases, jobs, res):
            with self.subTest(image=name, resize=s, crop=c):
                self.assertEqual(line, "ok")
                got = load_npy(job[4])
                ref = tv_tensor(path, s, c)[None]
                self.assertEqual(got.dtype, np.float32)
                self.assertEqual(got.shape, ref.shape)
                bad = np.count_nonzero(got.view(np.uint32) != ref.view(np.uint32))
                if bad:
                    u8 = tv_uint8(path, s, c)
                    self.fail("%d of %d floats differ from torchvision (max |diff| %g); "
                              "uint8 stage: %s" % (bad, got.size, np.abs(got - ref).max(),
                                                   u8.shape))
                exact += 1
        print("preprocess: %d tensors bit-identical to torchvision" % exact, file=sys.stderr)


class Damage(Base):
    """Truncated and corrupted files: ckpt refuses what Pillow refuses, and agrees on the rest."""

    def agree(self, cases):
        jobs = []
        for i, (label, data) in enumerate(cases):
            p = os.path.join(self.tmp, "dmg%d" % i)
            with open(p, "wb") as f:
                f.write(data)
            jobs.append(["decode", p, p + ".ppm"])
        res = run_jobs(jobs, self.tmp)
        accepted = refused = 0
        for (label, data), job, line in zip(cases, jobs, res):
            try:
                ref, _ = pil_rgb(data)
            except Exception as e:                     # noqa: BLE001 - any refusal counts
                ref = None
                why = "%s: %s" % (type(e).__name__, e)
            with self.subTest(case=label):
                if ref is None:
                    self.assertTrue(line.startswith("error "),
                                    "Pillow refuses (%s) but ckpt accepts" % why)
                    self.assertRegex(line, r"^error E[A-Z]+ \S")
                    refused += 1
                else:
                    self.assertTrue(line.startswith("ok "),
                                    "Pillow accepts but ckpt says: %s" % line)
                    got = read_ppm(job[2])
                    self.assertTrue(np.array_equal(got, ref), "pixels differ from Pillow")
                    accepted += 1
        return accepted, refused

    def test_truncated(self):
        paths = dict(self.images)
        cases = []
        for name in ["rgb_333x251_1.jpg", "rgb_600x401_4.jpg", "grey.jpg", "cmyk.jpg",
                     "rgb_500x375.png", "rgb_adam7.png", "palette.png", "ancillary.png",
                     "rgba16_adam7.png"]:
            with open(paths[name], "rb") as f:
                data = f.read()
            n = len(data)
            cuts = sorted(set([0, 1, 2, 3, 8, 20, 33, 60, 100] +
                              [n * k // 17 for k in range(1, 17)] +
                              [n - k for k in (1, 2, 3, 4, 5, 8, 12, 13, 16, 17, 20, 30)]))
            for c in cuts:
                if 0 <= c < n:
                    cases.append(("%s[:%d]" % (name, c), data[:c]))
        accepted, refused = self.agree(cases)
        print("truncated: %d refused as by Pillow, %d accepted with Pillow's pixels" %
              (refused, accepted), file=sys.stderr)
        self.assertGreater(refused, 100)
        self.assertGreater(accepted, 5)

    def test_corrupted(self):
        paths = dict(self.images)
        rng = np.random.default_rng(5)
        cases = []
        for name in ["rgb_333x251_1.jpg", "rgb_600x401_4.jpg", "rgb_500x375.png",
                     "palette.png", "rgb_adam7.png"]:
            with open(paths[name], "rb") as f:
                data = f.read()
            for k in range(12):
                b = bytearray(data)
                # Past the PNG chunks Pillow CRC-checks, or anywhere in the JPEG.
                lo = 50 if name.endswith(".png") else 2
                for _ in range(1 + k % 3):
                    pos = int(rng.integers(lo, len(b)))
                    b[pos] ^= 1 << int(rng.integers(0, 8))
                cases.append(("%s flip %d" % (name, k), bytes(b)))
        # Flips in PNG chunk headers and CRCs before IDAT: Pillow's checks are ckpt's.
        with open(paths["palette.png"], "rb") as f:
            data = f.read()
        for pos in (9, 12, 16, 20, 29, 30, 40, 45):
            b = bytearray(data)
            b[pos] ^= 0x10
            cases.append(("palette.png flip@%d" % pos, bytes(b)))
        accepted, refused = self.agree(cases)
        print("corrupted: %d refused, %d accepted, all as Pillow" % (refused, accepted),
              file=sys.stderr)

    def test_malformed_png(self):
        """Files Pillow opens although libpng would not, and some it refuses."""
        s8 = np.random.default_rng(1).integers(0, 256, (5, 6, 4))
        pal = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]

        def ihdr_byte(data, idx, val):
            b = bytearray(data)
            b[16 + idx] = val
            b[29:33] = struct.pack(">I", zlib.crc32(bytes(b[12:29])))
            return bytes(b)
        rgb = make_png(s8[..., :3], 8, 2)
        split = make_png(s8[..., :3], 8, 2, split=3)
        second = split.find(b"IDAT", split.find(b"IDAT") + 4) - 4
        cases = [
            ("no PLTE", make_png(s8[..., :1] % 4, 2, 3)),
            ("no PLTE, 8-bit", make_png(s8[..., :1], 8, 3)),
            ("PLTE of 13 bytes", make_png(s8[..., :1] % 4, 2, 3, plte=list(range(13)))),
            ("two PLTE", make_png(s8[..., :1] % 4, 2, 3, plte=[1, 2, 3],
                                  extra=chunk(b"PLTE", bytes([4, 5, 6])))),
            ("PLTE of 257 entries", make_png(s8[..., :1], 8, 3,
                                             plte=list(range(256)) * 3 + [7] * 3)),
            ("odd PLTE in RGB", make_png(s8[..., :3], 8, 2, plte=[1, 2, 3, 4])),
            ("compression method 1", ihdr_byte(make_png(s8[..., :1] % 4, 2, 3, plte=pal), 10, 1)),
            ("filter method 1", ihdr_byte(rgb, 11, 1)),
            ("interlace method 2", ihdr_byte(make_png(s8[..., :3], 8, 2, interlace=True), 12, 2)),
            ("zero width", make_png(np.zeros((5, 0, 1), int), 8, 0)),
            ("chunk name with digits", make_png(s8[..., :3], 8, 2, extra=chunk(b"ab1c", b"z"))),
            ("unknown critical chunk", make_png(s8[..., :3], 8, 2, extra=chunk(b"ABCD", b"z"))),
            ("IHDR not first", rgb[:8] + chunk(b"tEXt", b"a\0b") + rgb[8:33] + rgb[33:]),
            ("no IHDR", rgb[:8] + rgb[33:]),
            ("tEXt between IDATs", split[:second] + chunk(b"tEXt", b"a\0b") + split[second:]),
            ("IEND first", rgb[:8] + chunk(b"IEND", b"") + rgb[8:]),
        ]
        # A JPEG whose EOI is replaced by the start of a second frame header (found by the
        # fuzzer): libjpeg reads part of it after the last row, Pillow keeps the first frame.
        with open(dict(self.images)["grey.jpg"], "rb") as f:
            jpg = f.read()
        cases.append(("jpeg with a partial SOF after the image",
                      jpg[:-2] + b"\xff\xc0\x00\x0b\x08\x00\xd9"))
        cases.append(("jpeg with a second SOF after the image",
                      jpg[:-2] + b"\xff\xc0\x00\x0b\x08\x10\x00\x10\x00\x01\x01\x11\x00"))
        accepted, refused = self.agree(cases)
        self.assertGreater(accepted, 9)

    def test_hostile(self):
        ihdr = struct.pack(">IIBBBBB", 100000, 100000, 8, 2, 0, 0, 0)
        big_png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) +
                   chunk(b"IDAT", zlib.compress(b"\0" * 1000)) + chunk(b"IEND", b""))
        with open(dict(self.images)["rgb_31x17_6.jpg"], "rb") as f:
            jpg = bytearray(f.read())
        sof = jpg.find(b"\xff\xc0")
        jpg[sof + 5:sof + 9] = struct.pack(">HH", 60000, 60000)
        cases = [("empty", b"", "EFORMAT", "empty"), ("garbage", b"hello world", "EFORMAT", ""),
                 ("gif", b"GIF89a" + bytes(30), "EUNSUPPORTED", "GIF"),
                 ("webp", b"RIFF\0\0\0\0WEBPVP8 " + bytes(20), "EUNSUPPORTED", "WebP"),
                 ("huge png", big_png, "ELIMIT", "pixels"),
                 ("huge jpeg", bytes(jpg), "ELIMIT", "pixels"),
                 ("png signature only", b"\x89PNG\r\n\x1a\n", "ECORRUPT", "truncated"),
                 ("jpeg soi only", b"\xff\xd8\xff", "ECORRUPT", "")]
        jobs = []
        for i, (label, data, _, _) in enumerate(cases):
            p = os.path.join(self.tmp, "hostile%d" % i)
            with open(p, "wb") as f:
                f.write(data)
            jobs.append(["decode", p, p + ".ppm"])
        jobs.append(["decode", os.path.join(self.tmp, "no-such-file.png"), "x.ppm"])
        res = run_jobs(jobs, self.tmp)
        for (label, data, status, word), line in zip(cases, res):
            with self.subTest(case=label):
                self.assertTrue(line.startswith("error %s " % status), line)
                self.assertIn(word, line)
                with self.assertRaises(Exception):
                    pil_rgb(data)
        self.assertTrue(res[-1].startswith("error EIO cannot open"), res[-1])


class Npy(Base):
    def test_write_matches_np_save(self):
        shapes = [(), (0,), (5,), (1, 3, 224, 224), (2, 3), (7, 0, 3), (123456789012, 0),
                  (1,) * 30]
        rng = np.random.default_rng(3)
        jobs = []
        for i, shp in enumerate(shapes):
            a = rng.standard_normal(shp).astype(np.float32)
            if a.size:
                a.reshape(-1)[0] = np.float32(-0.0)
                a.reshape(-1)[-1] = np.float32("nan")
            src = os.path.join(self.tmp, "np%d.npy" % i)
            np.save(src, a)
            jobs.append(["npy", src, src + ".out.npy"])
        res = run_jobs(jobs, self.tmp)
        for shp, job, line in zip(shapes, jobs, res):
            with self.subTest(shape=shp):
                self.assertTrue(line.startswith("ok"), line)
                with open(job[1], "rb") as f, open(job[2], "rb") as g:
                    self.assertEqual(f.read(), g.read(), "bytes differ from np.save")

    def test_read_versions_and_refusals(self):
        a = np.arange(24, dtype=np.float32).reshape(2, 3, 4) / 7
        ok_cases, bad_cases = [], []
        for v in [(1, 0), (2, 0), (3, 0)]:
            buf = io.BytesIO()
            np.lib.format.write_array(buf, a, version=v)
            ok_cases.append(("v%d.%d" % v, buf.getvalue()))
        d = b"{\"shape\":(2L,3L,4L,),\"fortran_order\":False,\"descr\":\"<f4\"}"
        d += b" " * (63 - (10 + len(d)) % 64) + b"\n"
        ok_cases.append(("python 2 header",
                         b"\x93NUMPY\x01\x00" + struct.pack("<H", len(d)) + d + a.tobytes()))

        def saved(x, **kw):
            buf = io.BytesIO()
            np.save(buf, x, **kw)
            return buf.getvalue()
        good = saved(a)
        bad_cases += [
            ("float64", saved(a.astype(np.float64)), "EUNSUPPORTED", "'<f8'"),
            ("big-endian", saved(a.astype(">f4")), "EUNSUPPORTED", "big-endian"),
            ("uint8", saved(a.astype(np.uint8)), "EUNSUPPORTED", "'|u1'"),
            ("fortran", saved(np.asfortranarray(a)), "EUNSUPPORTED", "Fortran"),
            ("object", saved(np.array([1, None], dtype=object), allow_pickle=True),
             "EUNSUPPORTED", "'|O'"),
            ("structured", saved(np.zeros(2, dtype=[("x", "<f4")])), "EUNSUPPORTED",
             "structured"),
            ("truncated", good[:-1], "ECORRUPT", "truncated"),
            ("trailing", good + b"\0", "ECORRUPT", "after the data"),
            ("header cut", good[:40], "ECORRUPT", "truncated"),
            ("version 4", good[:6] + b"\x04\x00" + good[8:], "EUNSUPPORTED", "version"),
            ("not npy", b"PK\x03\x04" + bytes(100), "EFORMAT", "not a numpy"),
            ("shape not tuple", good.replace(b"(2, 3, 4)", b"[2, 3, 4]"), "ECORRUPT", "shape"),
            ("negative", good.replace(b"(2, 3, 4)", b"(2, -3, 4)"), "ECORRUPT", "shape"),
            ("overflow", good.replace(b"(2, 3, 4), ", b"(99999999999,99999999999,9)"),
             "ECORRUPT", "overflow"),
        ]
        jobs = []
        for i, case in enumerate(ok_cases + bad_cases):
            p = os.path.join(self.tmp, "rd%d.npy" % i)
            with open(p, "wb") as f:
                f.write(case[1])
            jobs.append(["npy", p, p + ".out.npy"])
        res = run_jobs(jobs, self.tmp)
        for (label, data), job, line in zip(ok_cases, jobs, res):
            with self.subTest(case=label):
                self.assertTrue(line.startswith("ok 3 24"), line)
                self.assertTrue(np.array_equal(load_npy(job[2]), a))
        for (label, data, status, word), line in zip(bad_cases, res[len(ok_cases):]):
            with self.subTest(case=label):
                self.assertTrue(line.startswith("error %s " % status), line)
                self.assertIn(word, line)


# ---- expected values for the C unit test -----------------------------------------------------

def fnv1a(data):
    h = 0x811c9dc5
    for b in bytes(data):
        h = ((h ^ b) * 0x01000193) & 0xffffffff
    return h


def c_tables():
    """Print the tables test_image.c embeds (its expected values come from here)."""
    from torchvision.transforms import functional as F
    print("/* generated by tests/test_preprocess.py --c-tables (torchvision %s, Pillow %s) */" %
          (__import__("torchvision").__version__, Image.__version__))
    print("static const struct { int w, h, size, ew, eh; } RESIZED_SIZE[] = {")
    for w, h, s in [(500, 375, 256), (375, 500, 256), (256, 256, 256), (4000, 255, 256),
                    (1, 300, 224), (333, 251, 232), (7, 5, 3), (1000, 999, 1), (17, 3, 256)]:
        nh, nw = F._compute_resized_output_size((h, w), [s])
        print("    {%d, %d, %d, %d, %d}," % (w, h, s, nw, nh))
    print("};")
    # A 9x7 test pattern (the same formula in C), resized and preprocessed.
    y, x, c = np.mgrid[0:7, 0:9, 0:3]
    pat = ((x * 37 + y * 91 + c * 53 + x * y * 7) % 256).astype(np.uint8)
    im = Image.fromarray(pat)
    print("static const struct { int w, h; uint32_t fnv; } RESIZE_PATTERN[] = {")
    for w, h in [(9, 7), (4, 3), (20, 15), (9, 2), (3, 7), (1, 1), (17, 5)]:
        print("    {%d, %d, 0x%08xu}," % (w, h, fnv1a(np.array(im.resize((w, h), Image.BILINEAR)))))
    print("};")
    from torchvision import transforms as T
    print("static const struct { int resize, crop; uint32_t fnv; } PREPROCESS_PATTERN[] = {")
    for s, cr in [(0, 5), (0, 9), (0, 12), (7, 7), (10, 8), (4, 6), (20, 13)]:
        steps = ([T.Resize(s)] if s else []) + [T.CenterCrop(cr), T.ToTensor(),
                                                 T.Normalize(MEAN, STD)]
        t = T.Compose(steps)(im).numpy().astype("<f4")
        print("    {%d, %d, 0x%08xu}," % (s, cr, fnv1a(t.tobytes())))
    print("};")
    # Small files of each kind, with Pillow's decode of them.
    rng = np.random.default_rng(11)
    s8 = rng.integers(0, 256, (5, 6, 4))
    s16 = rng.integers(0, 65536, (5, 6, 4))
    base = Image.fromarray(photo(6, 5, 3))
    files = []

    def saved(im, **kw):
        buf = io.BytesIO()
        im.save(buf, **kw)
        return buf.getvalue()
    files.append(("JPEG_RGB", saved(base, format="JPEG", quality=90)))
    files.append(("JPEG_PROG", saved(base, format="JPEG", quality=90, progressive=True)))
    files.append(("JPEG_GREY", saved(base.convert("L"), format="JPEG", quality=90)))
    files.append(("JPEG_CMYK", saved(base.convert("CMYK"), format="JPEG", quality=90)))
    files.append(("PNG_RGB", saved(base, format="PNG")))
    files.append(("PNG_RGB16", make_png(s16[..., :3], 16, 2)))
    files.append(("PNG_GREY16", make_png(s16[..., :1] // 128, 16, 0)))
    files.append(("PNG_GREY2_ADAM7", make_png(s8[..., :1] % 4, 2, 0, interlace=True)))
    files.append(("PNG_PAL_SHORT", make_png(s8[..., :1] % 16, 4, 3, plte=[9, 8, 7, 250, 0, 1])))
    files.append(("PNG_LA16", make_png(s16[..., :2], 16, 4)))
    for name, data in files:
        print("static const uint8_t %s[] = {" % name)
        for i in range(0, len(data), 16):
            print("    " + " ".join("0x%02x," % b for b in data[i:i + 16]))
        print("};")
    print("static const struct {\n    const char *name;\n    const uint8_t *data;\n"
          "    size_t size;\n    const char *format, *mode;\n    int w, h;\n"
          "    uint32_t fnv;\n"
          "    size_t min_prefix; /* Pillow accepts a prefix of the file iff it is this long */\n"
          "} DECODE_CASES[] = {")
    for name, data in files:
        with Image.open(io.BytesIO(data)) as im:
            mode, fmt = im.mode, im.format.lower()
            rgb = np.array(im.convert("RGB"))
        ok = []
        for n in range(len(data) + 1):
            try:
                got, _ = pil_rgb(data[:n])
                assert np.array_equal(got, rgb), "a prefix decodes to other pixels"
                ok.append(n)
            except (OSError, SyntaxError, ValueError):
                pass
        assert ok == list(range(ok[0], len(data) + 1)), "accepted prefixes are not contiguous"
        print('    {"%s", %s, sizeof %s, "%s", "%s", %d, %d, 0x%08xu, %d},' %
              (name, name, name, fmt, mode, rgb.shape[1], rgb.shape[0], fnv1a(rgb), ok[0]))
    print("};")
    buf = io.BytesIO()
    np.save(buf, np.arange(6, dtype=np.float32).reshape(2, 3) / 3)
    v = buf.getvalue()
    print("/* np.save(f, np.arange(6, dtype=np.float32).reshape(2, 3) / 3) */")
    print("static const uint8_t NPY_2X3[] = {")
    for i in range(0, len(v), 16):
        print("    " + " ".join("0x%02x," % b for b in v[i:i + 16]))
    print("};")


if __name__ == "__main__":
    if sys.argv[1:] == ["--c-tables"]:
        c_tables()
        sys.exit(0)
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    unittest.main(verbosity=1)
