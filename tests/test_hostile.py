#!/usr/bin/python3
"""
test_hostile.py - hostile files whose cost is chosen by the attacker (issue 9): each one must end
in the right answer or in the exit-2 contract (nothing on stdout, one `ckpt: error: FILE: ...`
line), within a generous time limit and under a 1 GiB address-space limit.

Every file is made here, with Python's pickle/zipfile (and torch where torch decides what the
right answer is):

  * a legacy checkpoint whose view storages form a chain of 3*10^5 views (each a view of the
    previous one): reading the last view must not recurse once per link; a short chain is
    checked against torch.load for the values;
  * dict keys chosen to collide in an unkeyed hash, against a control of random keys;
  * DEFLATE bombs: a data.pkl or data/N record whose inflated size is far beyond what the
    tensors need or the --max-alloc limit;
  * a safetensors header with a million tensors;
  * zips with duplicate entry names (data.pkl, data/0);
  * FIFOs and directories as file arguments, and extract onto a non-regular destination;
  * empty tensors whose other sizes multiply past 2^63.

The address-space limit is set in a preexec_fn; sanitizer builds reserve terabytes of shadow
memory, so there the peak RSS reported by wait4 is checked instead.
"""

import collections
import hashlib
import io
import json
import os
import pickle
import resource
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import unittest
import zipfile
import zlib

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ckpt_testlib as L  # noqa: E402

LIMIT_AS = 1 << 30      # bytes of address space a hostile file may make ckpt use


def _sanitized():
    try:
        p = subprocess.run(["ldd", L.CKPT_BIN], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        return b"libasan" in p.stdout or b"libubsan" in p.stdout
    except OSError:
        return False


SANITIZED = _sanitized()
# seconds: generous, the point is "not minutes, not forever"; a Debug build under ASan/UBSan
# runs the same work 3-5 times slower, and its allocator's quarantine raises the peak RSS
TIMEOUT = 90.0 if SANITIZED else 20.0
RSS_LIMIT = 4 * LIMIT_AS if SANITIZED else LIMIT_AS


def _limit():
    if not SANITIZED:
        resource.setrlimit(resource.RLIMIT_AS, (LIMIT_AS, LIMIT_AS))


def run_limited(args, timeout=TIMEOUT, stdin=subprocess.DEVNULL):
    """Run ckpt under the limits. Returns (rc, stdout, stderr, seconds, max_rss_bytes)."""
    cmd = [L.CKPT_BIN] + [str(a) for a in args]
    t0 = time.time()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=stdin,
                         env=L.RUN_ENV, preexec_fn=_limit)
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        out, err = p.communicate()
        return L.TIMED_OUT, out.decode(errors="replace"), err.decode(errors="replace"), \
            time.time() - t0, 0
    # communicate() reaped the child; its rusage is in RUSAGE_CHILDREN's running maximum,
    # which is an upper bound for this child (every earlier child passed the same bound).
    rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    return p.returncode, out.decode("utf-8", "surrogateescape"), \
        err.decode("utf-8", "surrogateescape"), time.time() - t0, rss


class HostileCase(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        L.require_bin()
        cls.tmp = tempfile.mkdtemp(prefix="ckpt-hostile-")

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def path(self, name):
        return os.path.join(self.tmp, name)

    def run_ok(self, args, what=""):
        rc, out, err, secs, rss = run_limited(args)
        self.assertEqual(rc, 0, "%s ckpt %s: exit %r in %.1f s, stderr: %s"
                         % (what, " ".join(map(str, args)), rc, secs, err[:600]))
        self.assertLess(rss, RSS_LIMIT, "%s: peak RSS %d bytes" % (what, rss))
        return out, err, secs

    def run_error(self, args, path, what="", expect=None):
        """The exit-2 contract; expect: a substring the one error line must contain."""
        rc, out, err, secs, rss = run_limited(args)
        L.check_clean_error(self, rc, out, err, path, "%s (ckpt %s)" % (what, " ".join(
            map(str, args))))
        self.assertLess(rss, RSS_LIMIT, "%s: peak RSS %d bytes" % (what, rss))
        if expect:
            self.assertIn(expect, err, what)
        return err, secs


# ---- pickles with persistent ids -----------------------------------------------------------

class StorageRef(object):
    """A persistent id to write: pickled as BINPERSID of `pid`."""

    def __init__(self, pid):
        self.pid = pid


class Rebuild(object):
    """torch._utils._rebuild_tensor_v2(storage, offset, size, stride, False, OrderedDict())."""

    def __init__(self, storage, offset, size, stride):
        self.args = (storage, offset, tuple(size), tuple(stride), False,
                     collections.OrderedDict())

    def __reduce__(self):
        import torch._utils
        return (torch._utils._rebuild_tensor_v2, self.args)


class PidPickler(pickle.Pickler):
    def persistent_id(self, obj):
        return obj.pid if isinstance(obj, StorageRef) else None


def dumps_pid(obj, protocol=2):
    b = io.BytesIO()
    PidPickler(b, protocol=protocol).dump(obj)
    return b.getvalue()


LEGACY_MAGIC = 0x1950a86a20f9469cfc6c


def legacy_file(path, obj, blobs):
    """torch's legacy format: magic, protocol 1001, sys_info, obj, key list, then per key an
    int64 element count and the bytes. blobs: [(key, numel, bytes)] in file order."""
    sys_info = dict(protocol_version=1001, little_endian=True,
                    type_sizes=dict(short=2, int=4, long=4))
    with open(path, "wb") as fh:
        for part in (LEGACY_MAGIC, 1001, sys_info):
            fh.write(pickle.dumps(part, protocol=2))
        fh.write(dumps_pid(obj))
        fh.write(pickle.dumps([k for k, _, _ in blobs], protocol=2))
        for _, numel, data in blobs:
            fh.write(struct.pack("<q", numel))
            fh.write(data)


def view_chain(path, links, numel=4):
    """A float32 root of links + numel elements (value i at index i); view k (1..links) is
    elements [1, ...) of view k-1 (view 0 is the root), so view `links` starts at element
    `links`. The object: {'chain': [every view], 'w': a tensor of numel elements over the last
    view}. Returns the expected float values of 'w'."""
    import torch
    total = links + numel
    refs = []
    for k in range(1, links + 1):
        refs.append(StorageRef(("storage", torch.FloatStorage, "v%d" % (k - 1), "cpu",
                                total - (k - 1), ("v%d" % k, 1, total - k))))
    obj = collections.OrderedDict()
    obj["chain"] = refs
    obj["w"] = Rebuild(refs[-1], 0, (numel,), (1,))
    legacy_file(path, obj, [("v0", total, struct.pack("<%df" % total, *range(total)))])
    return [float(links + i) for i in range(numel)]


class TestViewChains(HostileCase):
    def test_short_chain_agrees_with_torch(self):
        import torch
        p = self.path("chain_short.pt")
        want = view_chain(p, 50)
        got = torch.load(p)["w"]
        self.assertEqual(got.tolist(), want)          # the construction means what torch says
        doc = L.parse_json(self, self.run_ok(["tensors", "--json", "--sha256", p])[0], p)
        (w,) = [t for t in doc["tensors"] if t["path"] == ["w"]]
        self.assertEqual(w["sha256"], L.tensor_sha256(got))

    def test_long_chain(self):
        import torch
        p = self.path("chain_long.pt")
        links = 300000
        want = view_chain(p, links)
        sha = L.tensor_sha256(torch.tensor(want, dtype=torch.float32))
        doc = L.parse_json(self, self.run_ok(["tensors", "--json", "--sha256", p])[0], p)
        (w,) = [t for t in doc["tensors"] if t["path"] == ["w"]]
        self.assertEqual(w["sha256"], sha)
        out = self.path("chain_long_out.safetensors")
        for args in (["check", p], ["extract", p, "-o", out, "--no-check", "--force"],
                     ["diff", p, p], ["inspect", p], ["scan", p]):
            rc, so, se, secs, rss = run_limited(args)
            self.assertIn(rc, (0, 1, 2), "ckpt %s: exit %r, stderr: %s" % (args, rc, se[:600]))
            self.assertLess(rss, RSS_LIMIT)
            if rc == 2:
                L.check_clean_error(self, rc, so, se, p, " ".join(args))


# ---- FIFOs, directories and devices as file arguments ---------------------------------------

class TestNotRegular(HostileCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        import torch
        import torchvision
        torch.manual_seed(0)
        cls.small = os.path.join(cls.tmp, "small.pt")
        torch.save({"w": torch.arange(6, dtype=torch.float32)}, cls.small)
        cls.r18 = os.path.join(cls.tmp, "r18.pth")
        torch.save(torchvision.models.resnet18().state_dict(), cls.r18)
        cls.fifo = os.path.join(cls.tmp, "fifo.pt")
        os.mkfifo(cls.fifo)
        cls.dir = os.path.join(cls.tmp, "adir.pt")
        os.mkdir(cls.dir)
        from PIL import Image
        cls.img = os.path.join(cls.tmp, "img.png")
        Image.new("RGB", (32, 32), (200, 10, 10)).save(cls.img)

    def test_checkpoint_fifo(self):
        for cmd in (["inspect"], ["tensors", "--sha256"], ["scan"], ["check"]):
            self.run_error(cmd + [self.fifo], self.fifo, " ".join(cmd),
                           expect="is a FIFO, not a regular file")

    def test_checkpoint_directory(self):
        self.run_error(["inspect", self.dir], self.dir, "inspect", expect="is a directory")

    def test_checkpoint_device(self):
        self.run_error(["inspect", "/dev/zero"], "/dev/zero", "inspect",
                       expect="is a character device, not a regular file")

    def test_against_fifo(self):
        self.run_error(["check", self.small, "--against", self.fifo], self.fifo, "--against",
                       expect="is a FIFO, not a regular file")

    def test_image_fifo(self):
        rc, out, err, secs, rss = run_limited(["run", self.r18, self.fifo])
        self.assertEqual(rc, 2, err)
        self.assertIn("is a FIFO, not a regular file", err)
        # the same run with a real image works: the FIFO is what was refused
        self.run_ok(["run", self.r18, self.img])

    def test_labels_fifo(self):
        rc, out, err, secs, rss = run_limited(["run", self.r18, self.img, "--labels", self.fifo])
        L.check_clean_error(self, rc, out, err, self.fifo, "--labels")
        self.assertIn("is a FIFO, not a regular file", err)
        rc, out, err, secs, rss = run_limited(["run", self.r18, self.img, "--labels", self.dir])
        L.check_clean_error(self, rc, out, err, self.dir, "--labels")
        self.assertIn("is a directory", err)

    def test_input_npy_fifo(self):
        rc, out, err, secs, rss = run_limited(["run", self.r18, "--input", self.fifo])
        self.assertEqual(rc, 2, err)
        self.assertIn("is a FIFO, not a regular file", err)

    def test_save_input_onto_fifo(self):
        out_fifo = self.path("out_fifo.npy")
        os.mkfifo(out_fifo)
        rc, out, err, secs, rss = run_limited(["run", self.r18, self.img, "--save-input",
                                               out_fifo])
        self.assertEqual(rc, 2, err)
        self.assertIn("is a FIFO, not a regular file", err)
        self.assertTrue(stat_is_fifo(out_fifo), "the FIFO was replaced")

    def test_extract_onto_fifo(self):
        out_fifo = self.path("out_fifo.safetensors")
        os.mkfifo(out_fifo)
        rc, out, err, secs, rss = run_limited(["extract", self.small, "-o", out_fifo,
                                               "--no-check", "--force"])
        self.assertEqual(rc, 2, err)
        self.assertIn("not a regular file", err)
        self.assertTrue(stat_is_fifo(out_fifo), "the FIFO was replaced")
        # a regular file is still replaced with --force
        reg = self.path("out_reg.safetensors")
        open(reg, "wb").close()
        self.run_ok(["extract", self.small, "-o", reg, "--no-check", "--force"])
        self.assertGreater(os.path.getsize(reg), 0)


def stat_is_fifo(p):
    import stat
    return stat.S_ISFIFO(os.lstat(p).st_mode)


# ---- duplicate zip entry names --------------------------------------------------------------

class TestDuplicateEntries(HostileCase):
    def make(self, name, dup_of, data):
        """A torch.save zip with a second entry named like `dup_of` (root/...) appended."""
        import torch
        import warnings
        p = self.path(name)
        torch.save({"w": torch.arange(4, dtype=torch.float32)}, p)
        with zipfile.ZipFile(p) as z:
            root = z.namelist()[0].split("/")[0]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")          # "Duplicate name": allowed, on purpose
            with zipfile.ZipFile(p, "a") as z:
                z.writestr(root + "/" + dup_of, data)
        with zipfile.ZipFile(p) as z:              # the duplicate is really there
            names = z.namelist()
            self.assertEqual(sum(n.lower() == (root + "/" + dup_of).lower() for n in names), 2)
        return p, root

    def test_duplicate_data_pkl(self):
        p, root = self.make("dup_pkl.pt", "data.pkl", pickle.dumps({"w": 1}, protocol=2))
        for cmd in (["inspect"], ["tensors", "--sha256"], ["check"]):
            self.run_error(cmd + [p], p, " ".join(cmd),
                           expect="entry '%s/data.pkl' appears more than once" % root)
        self.scan_reads_every_copy(p, "%s/data.pkl" % root)

    def scan_reads_every_copy(self, p, name):
        """scan is the one command that reads such a file: every copy, with a note (a payload
        in either copy is flagged: test_scan.TorchRoute.test_duplicate_entries_all_scanned)."""
        rc, out, err = L.run_ckpt(["scan", "--json", p])
        self.assertEqual(rc, 0, err)
        notes = json.loads(out)["notes"]
        self.assertTrue(any("'%s' appears more than once" % name in n for n in notes), notes)

    def test_duplicate_data_0(self):
        p, root = self.make("dup_data0.pt", "data/0", struct.pack("<4f", 9, 9, 9, 9))
        for cmd in (["inspect"], ["tensors", "--sha256"]):
            self.run_error(cmd + [p], p, " ".join(cmd),
                           expect="entry '%s/data/0' appears more than once" % root)
        self.scan_reads_every_copy(p, "%s/data/0" % root)

    def test_duplicate_in_case_only(self):
        p, root = self.make("dup_case.pt", "DATA.PKL", pickle.dumps({"w": 1}, protocol=2))
        self.run_error(["inspect", p], p, "inspect", expect="appears more than once")

    def test_control_without_duplicate(self):
        import torch
        p = self.path("nodup.pt")
        torch.save({"w": torch.arange(4, dtype=torch.float32)}, p)
        self.run_ok(["tensors", "--sha256", p])


# ---- keys chosen to collide ----------------------------------------------------------------

M64 = (1 << 64) - 1
FMIX_C1, FMIX_C2 = 0xff51afd7ed558ccd, 0xc4ceb9fe1a85ec53


def unfmix64(h):
    """Inverse of MurmurHash3's fmix64 (the unkeyed int hash ckpt's dicts used)."""
    h ^= h >> 33
    h = (h * pow(FMIX_C2, -1, 1 << 64)) & M64
    h ^= h >> 33
    h = (h * pow(FMIX_C1, -1, 1 << 64)) & M64
    h ^= h >> 33
    return h


def as_int64(u):
    return u - (1 << 64) if u >= 1 << 63 else u


class TestCollidingKeys(HostileCase):
    N = 150000

    def dict_file(self, name, keys):
        p = self.path(name)
        with open(p, "wb") as fh:
            fh.write(pickle.dumps(dict.fromkeys(keys, 0), protocol=2))
        return p

    def test_int_keys(self):
        # fmix64(k ^ 0x1234567) has its low 20 bits zero: one probe chain in any table of up
        # to 2^20 slots under the old hash
        bad = [as_int64(unfmix64(j << 20) ^ 0x1234567) for j in range(1, self.N + 1)]
        self.assertEqual(len(set(bad)), self.N)
        import random
        rnd = random.Random(9)
        good = [as_int64(rnd.getrandbits(64)) for _ in range(self.N)]
        p_bad, p_good = self.dict_file("keys_bad.pkl", bad), self.dict_file("keys_good.pkl", good)
        for cmd in (["inspect", "--json"], ["scan"]):
            _, _, t_good = self.run_ok(cmd + [p_good], "control")
            out, _, t_bad = self.run_ok(cmd + [p_bad], "colliding keys")
            # generous: the point is linear, not quadratic (which took > 20 s)
            self.assertLess(t_bad, 10 * t_good + 3.0,
                            "%s: colliding keys %.1f s, random keys %.1f s" % (cmd, t_bad, t_good))
        doc = L.parse_json(self, self.run_ok(["inspect", "--json", p_bad])[0], p_bad)
        got = [it["key_node"]["value"] for it in doc["root"]["items"]]
        self.assertEqual(got, bad)                    # every key kept, in order


# ---- DEFLATE bombs ----------------------------------------------------------------------------

def bomb_zip(path, entries):
    """entries: [(name, bytes or (prefix, n_zero_bytes), compress)] written with zipfile;
    (prefix, n) streams prefix then n zero bytes through DEFLATE (a bomb of n / 1000 bytes)."""
    with zipfile.ZipFile(path, "w") as z:
        for name, data, comp in entries:
            ztype = zipfile.ZIP_DEFLATED if comp else zipfile.ZIP_STORED
            if isinstance(data, bytes):
                z.writestr(zipfile.ZipInfo(name), data, compress_type=ztype)
                continue
            prefix, n = data
            zi = zipfile.ZipInfo(name)
            zi.compress_type = ztype
            with z.open(zi, "w", force_zip64=True) as w:
                w.write(prefix)
                chunk = bytes(16 << 20)
                while n > 0:
                    w.write(chunk[:min(n, len(chunk))])
                    n -= len(chunk)


def small_pickle():
    """data.pkl of {'w': a float32 tensor of 4 elements over storage '0'}."""
    import torch
    obj = collections.OrderedDict(w=Rebuild(StorageRef(("storage", torch.FloatStorage, "0", "cpu",
                                                         4)), 0, (4,), (1,)))
    return dumps_pid(obj)


class TestInflateBounds(HostileCase):
    def test_pickle_bomb_default_limit(self):
        p = self.path("bomb_pkl.pt")
        bomb_zip(p, [("a/data.pkl", (small_pickle(), (1 << 30) + (64 << 20)), True),
                     ("a/data/0", struct.pack("<4f", 1, 2, 3, 4), False),
                     ("a/version", b"3\n", False)])
        self.assertLess(os.path.getsize(p), 2 << 20)        # a 1 MB file
        for cmd in (["inspect"], ["tensors", "--sha256"], ["check"]):
            self.run_error(cmd + [p], p, " ".join(cmd), expect="--max-alloc")

    def test_pickle_bomb_lower_limit(self):
        p = self.path("bomb_pkl_small.pt")
        bomb_zip(p, [("a/data.pkl", (small_pickle(), 8 << 20), True),
                     ("a/data/0", struct.pack("<4f", 1, 2, 3, 4), False),
                     ("a/version", b"3\n", False)])
        self.run_error(["inspect", "--max-alloc", "4M", p], p, "--max-alloc 4M",
                       expect="more than the limit of 4 MiB (raise it with --max-alloc)")
        # raised, it is read (the zeros after STOP are not looked at)
        self.run_ok(["inspect", "--max-alloc", "64M", p])

    def test_record_bomb(self):
        # storage '0' holds 16 bytes; its compressed record inflates to 512 MiB
        p = self.path("bomb_record.pt")
        bomb_zip(p, [("a/data.pkl", small_pickle(), False),
                     ("a/data/0", (struct.pack("<4f", 1, 2, 3, 4), 512 << 20), True),
                     ("a/version", b"3\n", False)])
        for cmd in (["inspect"], ["tensors", "--sha256"], ["diff", p]):
            self.run_error(cmd + [p], p, " ".join(cmd),
                           expect="compressed record 'a/data/0' inflates to")

    def test_large_record(self):
        # a storage of 1.1 GiB whose record is honestly compressed (1 MB): over the default
        # max_inflate, and, raised, more than the address space ckpt is given here
        import torch
        n = (1 << 30) + (128 << 20)
        obj = collections.OrderedDict(w=Rebuild(StorageRef(("storage", torch.ByteStorage, "0",
                                                             "cpu", n)), 0, (n,), (1,)))
        p = self.path("large_record.pt")
        bomb_zip(p, [("a/data.pkl", dumps_pid(obj), False),
                     ("a/data/0", (b"", n), True),
                     ("a/version", b"3\n", False)])
        # --max-expanded lifts the CLI's own budget on hashed bytes, so the library's limit
        # on inflating is what speaks
        big = ["--max-expanded", str(4 << 30)]
        self.run_error(["tensors", "--sha256"] + big + [p], p, "default limit",
                       expect="inflates to 1152 MiB, more than the limit of 1 GiB (raise it "
                              "with --max-inflate)")
        if not SANITIZED:
            self.run_error(["tensors", "--sha256", "--max-inflate", "2G"] + big + [p], p,
                           "raised",
                           expect="inflates to 1152 MiB, and that much memory cannot be "
                                  "allocated")

    def test_lying_size(self):
        # a compressed record whose directory claims far more than DEFLATE can expand to
        p = self.path("bomb_lie.pt")
        bomb_zip(p, [("a/data.pkl", small_pickle(), True),
                     ("a/data/0", struct.pack("<4f", 1, 2, 3, 4), False),
                     ("a/version", b"3\n", False)])
        with open(p, "rb") as fh:
            data = bytearray(fh.read())
        with zipfile.ZipFile(p) as z:
            zi = z.getinfo("a/data.pkl")
        claimed = zi.compress_size * 2000
        # local header: usize at +22; central directory entry (name at +46): usize at +24
        struct.pack_into("<I", data, zi.header_offset + 22, claimed)
        cd = data.index(b"PK\x01\x02")
        while data[cd + 46:cd + 46 + len(zi.filename)] != zi.filename.encode():
            cd = data.index(b"PK\x01\x02", cd + 4)
        struct.pack_into("<I", data, cd + 24, claimed)
        with open(p, "wb") as fh:
            fh.write(bytes(data))
        self.run_error(["inspect", p], p, "inspect", expect="more than DEFLATE can expand to")

    def test_compressed_control(self):
        # the same file, compressed honestly, reads with torch's values
        import torch
        p = self.path("deflated_ok.pt")
        bomb_zip(p, [("a/data.pkl", small_pickle(), True),
                     ("a/data/0", struct.pack("<4f", 1, 2, 3, 4), True),
                     ("a/version", b"3\n", False)])
        want = L.tensor_sha256(torch.load(p)["w"])
        doc = L.parse_json(self, self.run_ok(["tensors", "--json", "--sha256", p])[0], p)
        self.assertEqual([t["sha256"] for t in doc["tensors"]], [want])


# ---- safetensors headers ------------------------------------------------------------------------

def st_file(path, hdr_bytes, data=b""):
    with open(path, "wb") as fh:
        fh.write(struct.pack("<Q", len(hdr_bytes)) + hdr_bytes + data)


class TestSafetensorsHeader(HostileCase):
    def test_million_tensors(self):
        # 1.2 M empty tensors: a 70 MB header (3 GB of parsed objects before the limit)
        p = self.path("many.safetensors")
        one = '"t%d":{"dtype":"F32","shape":[0],"data_offsets":[0,0]}'
        hdr = "{" + ",".join(one % i for i in range(1200000)) + "}"
        st_file(p, hdr.encode())
        for cmd in (["inspect"], ["tensors"], ["check"]):
            self.run_error(cmd + [p], p, " ".join(cmd),
                           expect="more than the limit of 1 GiB (raise it with --max-alloc)")

    def test_worst_objects_under_limit(self):
        # just under the default bound, the densest JSON for the parser: 2.8 M empty objects
        p = self.path("objs.safetensors")
        n = (8 << 20) // 3 - 10
        st_file(p, b'{"x":[' + b"{}," * (n - 1) + b"{}]}")
        self.run_error(["inspect", p], p, "inspect", expect="tensor 'x' lacks dtype")

    def test_ordinary_header_and_limit_option(self):
        import json
        import torch
        p = self.path("ok.safetensors")
        tensors = {"t%d" % i: torch.full((2,), float(i)) for i in range(2000)}
        hdr = {k: {"dtype": "F32", "shape": [2], "data_offsets": [8 * i, 8 * i + 8]}
               for i, k in enumerate(tensors)}
        st_file(p, json.dumps(hdr).encode(),
                b"".join(t.numpy().tobytes() for t in tensors.values()))
        doc = L.parse_json(self, self.run_ok(["tensors", "--json", "--sha256", p])[0], p)
        self.assertEqual(len(doc["tensors"]), 2000)
        got = {"/".join(t["path"]): t["sha256"] for t in doc["tensors"]}
        self.assertEqual(got["t1999"], L.tensor_sha256(tensors["t1999"]))
        # the same header under a lower limit is refused, naming the option
        self.run_error(["inspect", "--max-alloc", "1M", p], p, "--max-alloc 1M",
                       expect="(raise it with --max-alloc)")


# ---- sizes whose product overflows --------------------------------------------------------------

class TestEmptyHugeDims(HostileCase):
    SHAPE = (0, 1 << 40, 1 << 40)

    def check_written(self, src):
        import torch
        want = torch.empty(self.SHAPE)
        for ext in ("pth", "safetensors"):
            out = self.path("empty_out_%s.%s" % (os.path.basename(src), ext))
            self.run_ok(["extract", src, "-o", out, "--no-check", "--force"])
            if ext == "pth":
                got = torch.load(out)["w"]
                self.assertEqual(tuple(got.shape), self.SHAPE)
                self.assertEqual(got.stride(), want.stride())   # torch's (wrapped) strides
            else:
                import json
                with open(out, "rb") as fh:
                    n = struct.unpack("<Q", fh.read(8))[0]
                    hdr = json.loads(fh.read(n))
                self.assertEqual(hdr["w"]["shape"], list(self.SHAPE))
                self.assertEqual(hdr["w"]["data_offsets"], [0, 0])
        doc = L.parse_json(self, self.run_ok(["tensors", "--json", "--sha256", src])[0], src)
        self.assertEqual([t["shape"] for t in doc["tensors"]], [list(self.SHAPE)])
        self.assertEqual(doc["tensors"][0]["sha256"], L.tensor_sha256(want))

    def test_safetensors(self):
        p = self.path("empty_huge.safetensors")
        hdr = {"w": {"dtype": "F32", "shape": list(self.SHAPE), "data_offsets": [0, 0]}}
        import json
        st_file(p, json.dumps(hdr).encode())
        self.check_written(p)

    def test_pth(self):
        import torch
        p = self.path("empty_huge.pt")
        torch.save({"w": torch.empty(self.SHAPE)}, p)
        self.check_written(p)


if __name__ == "__main__":
    L.main("test_hostile")
