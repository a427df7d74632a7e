#!/usr/bin/python3
"""
test_scan.py - `ckpt scan` flags every hostile file, and no ckpt command ever runs a payload.

Expected globals are computed here from the files themselves with a symbolic pickletools run
(ckpt_testlib.pickle_globals), never hand-typed and never taken from ckpt:
  * malicious corpus files (picklescan/, modelscan/: any file whose pickles name a global outside
    the weights/data set): `scan` exits 1, "safe" is false, every global the file names is
    listed, none outside the weights/data set is called weights or data, the ones issue 2 lists
    (os/posix.system, builtins.eval/exec/__import__/getattr, subprocess.*, runpy.*, pickle.loads,
    socket.*) are "dangerous", and each file has at least one "dangerous" global.
  * benign pickles and the generated fixtures: exit 0, "safe": true, exactly the globals the
    pickles name, all weights/data.
  * proof that nothing runs: payloads made here with Python's pickle and torch.save (zip, legacy,
    protocol 2 and 4, a payload in the legacy magic-number slot, one in a side .pkl of a zip)
    that create a sentinel file through os.system, posix.system, builtins.exec/eval,
    subprocess.Popen, runpy and pickle.loads. Each is first loaded by Python to prove the payload
    is live (the sentinel appears), then every ckpt command runs on it and on every malicious
    corpus file in an empty working directory: the sentinel never appears, the directory stays
    empty, and under strace the only execve is ckpt's own.
"""

import concurrent.futures
import json
import os
import pickle
import shutil
import subprocess
import sys
import tempfile
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ckpt_testlib as L  # noqa: E402

COMMANDS = (["inspect"], ["inspect", "--json"], ["tensors"], ["tensors", "--json", "--sha256"],
            ["scan"], ["scan", "--json"])
HOSTILE_DIRS = ("picklescan", "modelscan")
NOT_EXTRACTABLE = ("malicious1.7z",)   # 7z: no decompressor in ckpt's dependency set
STRACE = shutil.which("strace")


def corpus_files():
    out = []
    for d in HOSTILE_DIRS:
        base = os.path.join(L.CORPUS, d)
        if os.path.isdir(base):
            out += [os.path.join(base, f) for f in sorted(os.listdir(base))]
    return out


def classify_corpus():
    """{path: (kind, globals)}: kind 'malicious', 'benign' (pickles naming only weights/data
    globals), 'opaque' (a malicious container whose pickles cannot be reached) or 'none'."""
    res = {}
    for p in corpus_files():
        globs, npk = L.file_pickle_globals(p)
        named = [g for g in globs if g["full"] != "?"]
        bad = [g for g in globs if not L.known_ok_global(g["full"])]
        if bad:
            res[p] = ("malicious", named)
        elif os.path.basename(p) in NOT_EXTRACTABLE:
            res[p] = ("opaque", [])
        elif npk:
            res[p] = ("benign", named)
        else:
            res[p] = ("none", [])
    return res


CORPUS_KINDS = classify_corpus()


def _names(doc):
    return [(L.scan_entry_name(e), e.get("kind")) for e in doc.get("globals", [])]


def _spellings(g):
    return {g["full"], g["raw"]}


# ---- crafted payloads ---------------------------------------------------------------------------

class Reduce(object):
    """Pickles as fn(*args)."""

    def __init__(self, fn, *args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


def craft_payloads(d, sentinel_dir):
    """Write hostile files into d. Returns [(path, sentinel, loader)] where loader is 'pickle',
    'torch' or 'zip-entry:NAME' (how Python would be fooled into running it)."""
    import builtins
    import os as os_mod
    import runpy
    import subprocess as sp
    out = []

    def sent(name):
        return os.path.join(sentinel_dir, "sentinel_" + name)

    def put(name, data, loader="pickle"):
        p = os.path.join(d, name)
        with open(p, "wb") as f:
            f.write(data)
        out.append((p, sent(os.path.splitext(name)[0]), loader))

    s = sent("proto0_os_system")
    put("proto0_os_system.pkl", b"cos\nsystem\n(S'touch " + s.encode() + b"'\ntR.")
    for proto in (2, 4):
        s = sent("posix_system_p%d" % proto)
        put("posix_system_p%d.pkl" % proto, pickle.dumps(Reduce(os_mod.system, "touch " + s),
                                                          protocol=proto))
        s = sent("exec_p%d" % proto)
        put("exec_p%d.pkl" % proto, pickle.dumps(
            Reduce(builtins.exec, "open(%r, 'w').close()" % s), protocol=proto))
    s = sent("eval_p2")
    put("eval_p2.pkl", pickle.dumps(Reduce(builtins.eval, "__import__('os').system('touch %s')"
                                           % s), protocol=2))
    s = sent("popen_p3")
    put("popen_p3.pkl", pickle.dumps(Reduce(sp.Popen, ["touch", s]), protocol=3))
    s = sent("runpy_p4")
    put("runpy_p4.pkl", pickle.dumps(Reduce(runpy._run_code, "open(%r, 'w').close()" % s, {}),
                                     protocol=4))
    s = sent("nested_loads_p2")
    inner = pickle.dumps(Reduce(os_mod.system, "touch " + s), protocol=2)
    put("nested_loads_p2.pkl", pickle.dumps(Reduce(pickle.loads, inner), protocol=2))
    # A list holding a benign item then the payload: the call is not at the root.
    s = sent("deep_p2")
    put("deep_p2.pkl", pickle.dumps({"a": [1, 2, {"b": Reduce(os_mod.system, "touch " + s)}]},
                                    protocol=2))
    # Torch files: torch.save of a state dict with a payload beside the weights.
    import torch
    w = torch.arange(6, dtype=torch.float32).reshape(2, 3)
    for fmt, proto in (("zip", 2), ("legacy", 2), ("zip", 4), ("legacy", 4)):
        name = "torch_%s_p%d" % (fmt, proto)
        s = sent(name)
        p = os.path.join(d, name + ".pt")
        torch.save({"weight": w, "evil": Reduce(os_mod.system, "touch " + s)}, p,
                   pickle_protocol=proto, _use_new_zipfile_serialization=(fmt == "zip"))
        out.append((p, s, "torch"))
    # Legacy file whose magic-number pickle is a call that returns the magic number.
    s = sent("legacy_magic_eval")
    legit = os.path.join(d, "legit_legacy.tmp")
    torch.save({"weight": w}, legit, _use_new_zipfile_serialization=False)
    with open(legit, "rb") as f:
        rest = f.read()[15:]
    os.unlink(legit)
    magic = pickle.dumps(Reduce(builtins.eval, "__import__('os').system('touch %s') or "
                                "0x1950a86a20f9469cfc6c" % s), protocol=2)
    put("legacy_magic_eval.pt", magic + rest, loader="torch")
    # A torch-like zip whose payload is in a side pickle next to a clean data.pkl.
    s = sent("zip_side_pkl")
    clean = os.path.join(d, "clean.tmp")
    torch.save({"weight": w}, clean)
    import zipfile
    p = os.path.join(d, "zip_side_pkl.pt")
    with zipfile.ZipFile(clean) as zin, zipfile.ZipFile(p, "w") as zout:
        for info in zin.infolist():
            zout.writestr(info.filename, zin.read(info.filename))
        root = zin.infolist()[0].filename.split("/")[0]
        zout.writestr(root + "/extra.pkl", pickle.dumps(Reduce(os_mod.system, "touch " + s),
                                                        protocol=2))
    os.unlink(clean)
    out.append((p, s, "zip-entry:%s/extra.pkl" % root))
    for name, data in polyglots(sent).items():
        put(name, data, loader="torch")
    return out


def _system_p0(sentinel):
    """A protocol 0 payload: os.system('touch SENTINEL'), as bytes."""
    return b"cos\nsystem\n(S'touch " + sentinel.encode() + b"'\ntR."


def legacy_tar(members):
    """A torch 0.1.x tar (what torch.load's legacy_load extracts): {name: bytes}."""
    import io
    import tarfile
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def polyglots(sent):
    """{file name: bytes}: pickles that torch.load runs although their first bytes also read
    as another format (issue 9, class 1). Each is checked live under torch.load by
    test_1_payloads_are_live, so the shapes below are what torch really executes."""
    out = {}
    # safetensors: the first 8 bytes, little-endian, are a header length N <= size - 8 with
    # '{' at offset 8. BINFLOAT ('G' + 8 bytes) makes bytes 1..8 an argument: N = 0x147.
    head = b"G\x01\x00\x00\x00\x00\x00\x00{0"
    body = head + _system_p0(sent("poly_safetensors"))
    out["poly_safetensors.safetensors"] = body + b" " * (0x147 + 8 - len(body) + 16)
    # the same, truncated below N + 8: "a truncated safetensors file"
    body = head + _system_p0(sent("poly_st_truncated"))
    out["poly_st_truncated.safetensors"] = body
    # GIF and GGUF magics: 'G' is BINFLOAT too, eating the next 8 bytes.
    for magic, name in ((b"GIF89a\x00\x00\x00", "gif"), (b"GGUF\x03\x00\x00\x00\x00", "gguf")):
        out["poly_%s.bin" % name] = magic + b"0" + _system_p0(sent("poly_" + name))
    # bzip2 "BZh": BINBYTES with a 4-byte length 0x0000685a eats that many bytes.
    n = 0x685A
    out["poly_bzip2.bin"] = (b"BZh\x00\x00" + b"\x00" * n + b"0" +
                             _system_p0(sent("poly_bzip2")))
    # tar magic "ustar" at 257 with a bad checksum: tarfile refuses it, torch unpickles.
    p = _system_p0(sent("poly_ustar"))
    data = bytearray(p + b" " * (600 - len(p)))
    data[257:263] = b"ustar\x00"
    out["poly_ustar.bin"] = bytes(data)
    # a real torch 0.1.x tar whose 'pickle' member is the payload
    out["tar_pickle_member.tar"] = legacy_tar({
        "storages": pickle.dumps(0, protocol=2) + pickle.dumps([], protocol=2),
        "tensors": pickle.dumps(0, protocol=2),
        "pickle": _system_p0(sent("tar_pickle_member"))})
    # ... and one whose second storage record is the payload, after a first record and its
    # raw bytes (an element count, then 2 float32 values)
    import struct
    import torch
    rec = pickle.dumps(("k0", "cpu", torch.FloatStorage), protocol=2)
    raw = struct.pack("<q", 2) + struct.pack("<2f", 1.0, 2.0)
    out["tar_storage_record.tar"] = legacy_tar({
        "storages": pickle.dumps(2, protocol=2) + rec + raw +
        _system_p0(sent("tar_storage_record")),
        "tensors": pickle.dumps(0, protocol=2), "pickle": pickle.dumps({}, protocol=2)})
    return out


def python_load(path, loader, cwd):
    """Positive control: load the file the way a victim would (in a subprocess)."""
    if loader == "pickle":
        code = "import pickle,sys; pickle.load(open(sys.argv[1],'rb'))"
    elif loader == "torch":
        code = "import torch,sys; torch.load(sys.argv[1], map_location='cpu')"
    else:
        entry = loader.split(":", 1)[1]
        code = ("import pickle,sys,zipfile; pickle.loads(zipfile.ZipFile(sys.argv[1]).read(%r))"
                % entry)
    subprocess.run([sys.executable, "-c", code, path], cwd=cwd, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL, timeout=120)


# ---- running every command in a sandbox directory ------------------------------------------

def run_guarded(args, workdir, tag):
    """Run ckpt ARGS with cwd=workdir (empty), under strace when there is one. Returns
    (rc, out, err, execs, connects, created) with created the files that appeared."""
    prefix = None
    log = None
    if STRACE:
        log = os.path.join(os.path.dirname(workdir), "strace_%s.log" % tag)
        prefix = [STRACE, "-f", "-qq", "-e", "trace=execve,execveat,connect", "-o", log]
    env = None
    if STRACE:   # LeakSanitizer cannot run under ptrace; ASan proper still does
        env = dict(L.RUN_ENV)
        env["ASAN_OPTIONS"] = ":".join(x for x in (env.get("ASAN_OPTIONS"), "detect_leaks=0")
                                       if x)
    rc, out, err = L.run_ckpt(args, cwd=workdir, prefix=prefix, env=env,
                              timeout=L.DEFAULT_TIMEOUT * (3 if STRACE else 1))
    execs, connects = [], []
    if log and os.path.exists(log):
        with open(log) as f:
            for ln in f:
                if "execve" in ln:
                    execs.append(ln.strip())
                elif "connect(" in ln:
                    connects.append(ln.strip())
        os.unlink(log)
    created = os.listdir(workdir)
    return rc, out, err, execs, connects, created


class Scan(unittest.TestCase):

    def test_corpus_classification_sane(self):
        kinds = [k for k, _ in CORPUS_KINDS.values()]
        self.assertGreaterEqual(kinds.count("malicious"), 80, "too few malicious files found")
        self.assertGreaterEqual(kinds.count("benign"), 3)

    def test_malicious_corpus_flagged(self):
        L.require_bin(self)
        for path, (kind, globs) in sorted(CORPUS_KINDS.items()):
            if kind not in ("malicious", "opaque"):
                continue
            with self.subTest(file=os.path.relpath(path, L.CORPUS)):
                rc, out, err = L.run_ckpt(["scan", "--json", path])
                if kind == "opaque":
                    # Its pickles are inside a container ckpt cannot open: refusing is fine,
                    # calling it safe is not.
                    self.assertIn(rc, (1, 2), "scan %s: exit %r: %s" % (path, rc, err))
                    if rc == 2:
                        L.check_clean_error(self, rc, out, err, path, "scan --json")
                        print("note: %s refused by scan: %s" % (os.path.basename(path),
                                                                err.strip()))
                    continue
                self.assertEqual(rc, 1, "scan %s: exit %r (want 1); stderr: %s" % (
                    path, rc, err.strip()))
                doc = L.parse_json(self, out, "scan --json " + path)
                self.assertIs(doc.get("safe"), False, "scan %s: \"safe\" is not false" % path)
                listed = dict()
                for name, k in _names(doc):
                    listed.setdefault(name, k)
                for g in globs:
                    hit = [n for n in _spellings(g) if n in listed]
                    self.assertTrue(hit, "scan %s: global %s (at %d in %s) not listed; listed: %s"
                                    % (path, g["full"], g["offset"], g["where"], sorted(listed)))
                    k = listed[hit[0]]
                    if not L.known_ok_global(g["full"]):
                        # Only the weights_only allowlist may be called "weights"; what counts
                        # as harmless data is ckpt's call (builtins.dict, ...).
                        self.assertIn(k, ("unknown", "dangerous", "data"),
                                      "scan %s: %s is classified %r" % (path, g["full"], k))
                    if L.issue_dangerous(g["full"]):
                        self.assertEqual(k, "dangerous", "scan %s: %s is classified %r; issue 2 "
                                         "lists it as dangerous" % (path, g["full"], k))
                rc2, out2, err2 = L.run_ckpt(["scan", path])
                self.assertEqual(rc2, 1, "plain scan %s: exit %r" % (path, rc2))
                for g in globs:
                    if not L.known_ok_global(g["full"]):
                        self.assertTrue(any(n in out2 for n in _spellings(g)),
                                        "plain scan %s does not name %s:\n%s" % (path, g["full"],
                                                                                out2))

    def test_malicious_corpus_has_dangerous(self):
        """Each malicious file lists at least one global classified "dangerous"."""
        L.require_bin(self)
        weak = []
        for path, (kind, globs) in sorted(CORPUS_KINDS.items()):
            if kind != "malicious":
                continue
            rc, out, err = L.run_ckpt(["scan", "--json", path])
            try:
                kinds = {k for _, k in _names(json.loads(out))}
            except (ValueError, AttributeError):
                kinds = set()
            if "dangerous" not in kinds:
                weak.append("%s (%s: %s)" % (os.path.basename(path), ", ".join(sorted(
                    {g["full"] for g in globs if not L.known_ok_global(g["full"])})),
                    ",".join(sorted(kinds)) or "exit %r" % rc))
        self.assertEqual(weak, [], "%d malicious files have no \"dangerous\" global:\n  %s" % (
            len(weak), "\n  ".join(weak)))

    def test_benign_corpus(self):
        L.require_bin(self)
        n = 0
        for path, (kind, globs) in sorted(CORPUS_KINDS.items()):
            if kind != "benign":
                continue
            base = os.path.basename(path)
            must_read = base.startswith("benign0_") or base.endswith("pytorch_model.bin")
            rc, out, err = L.run_ckpt(["scan", "--json", path])
            with self.subTest(file=base):
                if rc == 2 and not must_read:
                    # e.g. numpy files: refused cleanly is acceptable for a non-torch format
                    L.check_clean_error(self, rc, out, err, path, "scan")
                    continue
                n += 1
                self.assertEqual(rc, 0, "scan %s: exit %r: %s" % (path, rc, err.strip()))
                doc = L.parse_json(self, out, "scan --json " + path)
                self.assertIs(doc.get("safe"), True, "scan %s: not safe" % path)
                names = {n for n, _ in _names(doc)}
                want = {g["full"] for g in globs}
                self.assertTrue(all(any(s in names for s in _spellings(g)) for g in globs),
                                "scan %s lists %s, the file names %s" % (path, sorted(names),
                                                                         sorted(want)))
        self.assertGreaterEqual(n, 3)

    def test_fixtures_safe(self):
        """The generated state dicts and training checkpoints are safe, with exactly the
        globals their pickles name."""
        L.require_bin(self)
        mpath = os.path.join(L.CKPT_FIXTURES or "", "manifest.json")
        self.assertTrue(os.path.exists(mpath), "no fixtures manifest")
        with open(mpath) as f:
            manifest = json.load(f)
        for m in manifest:
            if not m["scan_safe"]:
                continue
            path = os.path.join(L.CKPT_FIXTURES, m["file"])
            exp = L.load_expected(os.path.join(L.CKPT_FIXTURES, m["expected"]))
            with self.subTest(file=m["file"]):
                rc, out, err = L.run_ckpt(["scan", "--json", path], timeout=60)
                self.assertEqual(rc, 0, "scan %s: exit %r; stderr %s; stdout %s" % (
                    m["file"], rc, err.strip(), out[:1500]))
                doc = L.parse_json(self, out, "scan --json " + path)
                self.assertIs(doc.get("safe"), True)
                got = _names(doc)
                self.assertEqual(sorted({n for n, _ in got}), sorted(set(exp["globals"])),
                                 "scan %s: globals differ from the pickle's" % m["file"])
                for n, k in got:
                    self.assertIn(k, ("weights", "data"), "scan %s: %s is %r" % (m["file"], n, k))
                self.assertEqual(doc.get("file"), path)


class TorchRoute(unittest.TestCase):
    """scan reads what torch.load reads, whatever the magic bytes say (issue 9, classes 1 and
    2): pickles behind other formats' magics are flagged, and tensor data, storage bytes and
    bytes after a STOP never make an ordinary file unreadable."""

    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="ckpt_route_")

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def _scan(self, path):
        rc, out, err = L.run_ckpt(["scan", "--json", path])
        doc = L.parse_json(self, out, "scan --json " + path) if rc in (0, 1) else {}
        return rc, doc, err

    def test_polyglots_flagged(self):
        L.require_bin(self)
        files = polyglots(lambda name: os.path.join(self.tmp, "never_" + name))
        for name, data in sorted(files.items()):
            with self.subTest(file=name):
                p = os.path.join(self.tmp, name)
                with open(p, "wb") as f:
                    f.write(data)
                rc, doc, err = self._scan(p)
                self.assertEqual(rc, 1, "scan %s: exit %r: %s" % (name, rc, err.strip()))
                kinds = dict(_names(doc))
                self.assertEqual(kinds.get("os.system"), "dangerous", "%s: %s" % (name, kinds))
                self.assertIs(doc.get("safe"), False)

    def _write_torch(self, name, obj, zip_format=True):
        import torch
        p = os.path.join(self.tmp, name)
        torch.save(obj, p, _use_new_zipfile_serialization=zip_format)
        return p

    def test_tensor_data_is_not_a_pickle(self):
        """Storage bytes that start like a pickle (int64 640 is 80 02 00 ..., a float32 of
        bits 0x.... 0280 likewise) are data, in the zip and the legacy format."""
        import torch
        import torchvision
        L.require_bin(self)
        sd = torchvision.models.resnet18().state_dict()
        for k in sd:
            if k.endswith("num_batches_tracked"):
                sd[k] = torch.tensor(640)
        first = torch.tensor([640], dtype=torch.int64).numpy().tobytes()[:2]
        self.assertEqual(first, b"\x80\x02")   # the premise: it does look like PROTO 2
        cases = {"resnet18_nbt640": sd, "float_first": 1.5,
                 "float_tensor": torch.tensor([struct_float(b"\x80\x02\x00\x00")]),
                 "list_first": [torch.tensor(640), {"a": 1}]}
        for name, obj in cases.items():
            for zip_format in (True, False):
                with self.subTest(case=name, zip=zip_format):
                    p = self._write_torch("%s_%d.pt" % (name, zip_format), obj, zip_format)
                    rc, doc, err = self._scan(p)
                    self.assertEqual(rc, 0, "scan %s: exit %r: %s" % (p, rc, err.strip()))
                    self.assertIsNone(doc.get("parse_error"))
                    self.assertEqual(doc.get("format"), "zip" if zip_format else "legacy")
                    self.assertEqual(doc.get("notes"), [], "%s: %s" % (name, doc.get("notes")))

    def test_bytes_after_stop(self):
        """Junk after data.pkl's or a bare pickle's STOP is reported, not parsed; a second
        pickle there is listed (pickle.load called again would run it)."""
        import zipfile
        L.require_bin(self)
        clean = self._write_torch("clean.pt", {"a": 1})
        with zipfile.ZipFile(clean) as z:
            names = z.namelist()
            entries = {n: z.read(n) for n in names}
        pkl = [n for n in names if n.endswith("/data.pkl")][0]
        import os as os_mod
        evil = pickle.dumps(Reduce(os_mod.system, "true"), protocol=2)
        for tail, want_rc in ((b"\x00junk", 0), (evil, 1), (evil + b"\xffmore", 1)):
            with self.subTest(tail=tail[:8]):
                p = os.path.join(self.tmp, "tail.pt")
                with zipfile.ZipFile(p, "w") as z:
                    for n in names:
                        z.writestr(n, entries[n] + (tail if n == pkl else b""))
                rc, doc, err = self._scan(p)
                self.assertEqual(rc, want_rc, "exit %r: %s" % (rc, err.strip()))
                self.assertTrue(doc.get("notes"), "no note about the bytes after STOP")
                self.assertIsNone(doc.get("parse_error"))
                bare = os.path.join(self.tmp, "tail.pkl")
                with open(bare, "wb") as f:
                    f.write(pickle.dumps({"a": 1}, protocol=2) + tail)
                rc, doc, err = self._scan(bare)
                self.assertEqual(rc, want_rc, "bare: exit %r: %s" % (rc, err.strip()))
                self.assertEqual(doc.get("format"), "pickle")

    def test_side_only_globals_worded_apart(self):
        """A global named only by a side pickle (another .pkl entry, a pickle after the STOP)
        is still unsafe, but torch.load does not run it: scan --json says torch_load false and
        the verdict line does not claim torch.load would run it. Which payload torch.load
        actually runs is measured with sentinel files, not assumed."""
        import zipfile
        import builtins
        import os as os_mod
        L.require_bin(self)
        clean = self._write_torch("side_clean.pt", {"a": 1})
        with zipfile.ZipFile(clean) as z:
            entries = [(n, z.read(n)) for n in z.namelist()]
        root = entries[0][0].split("/")[0]

        def touch(sentinel):
            return Reduce(os_mod.system, "touch " + sentinel)

        def make(name):
            """(path, {global: sentinel}) for one layout."""
            s_sys = os.path.join(self.tmp, name + "_system.ran")
            s_eval = os.path.join(self.tmp, name + "_eval.ran")
            p = os.path.join(self.tmp, name)
            side = pickle.dumps(touch(s_sys), protocol=2)
            route = pickle.dumps({"a": Reduce(builtins.eval, "__import__('os').system("
                                              "'touch %s')" % s_eval)}, protocol=2)
            if name == "bare_tail.pkl":      # a pickle after the STOP torch stops at
                with open(p, "wb") as f:
                    f.write(pickle.dumps({"a": 1}, protocol=2) + side)
                return p, {"posix.system": s_sys}
            with zipfile.ZipFile(p, "w") as z:
                for n, data in entries:
                    if n.endswith("/data.pkl") and name == "mixed.pt":
                        data = route
                    z.writestr(n, data)
                z.writestr(root + "/extra.pkl", side)
            want = {"posix.system": s_sys}
            if name == "mixed.pt":
                want["builtins.eval"] = s_eval
            return p, want

        for name in ("side_only.pt", "bare_tail.pkl", "mixed.pt"):
            with self.subTest(file=name):
                p, sentinels = make(name)
                work = tempfile.mkdtemp(dir=self.tmp)
                python_load(p, "torch", work)
                ran = {g: os.path.exists(s) for g, s in sentinels.items()}
                # the premise: torch.load runs the data.pkl payload and never the side one
                self.assertFalse(ran["posix.system"], name)
                if "builtins.eval" in ran:
                    self.assertTrue(ran["builtins.eval"], name)
                rc, doc, err = self._scan(p)
                self.assertEqual(rc, 1, "%s: exit %r: %s" % (name, rc, err.strip()))
                got = {L.scan_entry_name(e): e.get("torch_load") for e in doc.get("globals", [])
                       if e.get("kind") in ("dangerous", "unknown")}
                self.assertEqual(got, ran, name)
                rc, out, err = L.run_ckpt(["scan", p])
                verdict = [ln for ln in out.splitlines() if ln.startswith("unsafe:")]
                self.assertEqual(len(verdict), 1, out)
                n_route = sum(ran.values())
                if n_route == 0:
                    self.assertNotIn("torch.load(weights_only=False) would", verdict[0])
                    self.assertIn("only side pickles", verdict[0])
                else:
                    self.assertIn("would import and run %d of them" % n_route, verdict[0])

    def test_duplicate_entries_all_scanned(self):
        """A zip holding data.pkl twice: torch reads one copy or the other by layout, so scan
        lists the globals of every copy, while other commands refuse the file."""
        import warnings
        import zipfile
        import os as os_mod
        L.require_bin(self)
        clean = self._write_torch("dup_clean.pt", {"a": 1})
        with zipfile.ZipFile(clean) as z:
            names = z.namelist()
            entries = {n: z.read(n) for n in names}
        pkl = [n for n in names if n.endswith("/data.pkl")][0]
        evil = pickle.dumps(Reduce(os_mod.system, "true"), protocol=2)
        for first in (True, False):
            with self.subTest(evil_first=first):
                p = os.path.join(self.tmp, "dup.pt")
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    with zipfile.ZipFile(p, "w") as z:
                        for n in names:
                            z.writestr(n, entries[n])
                            if n == pkl:
                                z.writestr(n, evil if first else entries[n])
                        if not first:
                            z.writestr(pkl, evil)
                rc, doc, err = self._scan(p)
                self.assertEqual(rc, 1, "exit %r: %s" % (rc, err.strip()))
                self.assertEqual(dict(_names(doc)).get("posix.system"), "dangerous")
                self.assertTrue(any("more than once" in n for n in doc.get("notes", [])))
                rc, out, err = L.run_ckpt(["inspect", p])
                self.assertEqual((rc, out), (2, ""), err)
                self.assertIn("appears more than once", err)

    def test_legacy_tar(self):
        """A torch 0.1.x tar with benign pickles: scanned member by member, safe; torch.load
        itself reads the same file (so the fixture has the real layout)."""
        import struct
        import torch
        L.require_bin(self)
        rec = pickle.dumps(("k0", "cpu", torch.FloatStorage), protocol=2)
        raw = struct.pack("<q", 2) + struct.pack("<2f", 1.5, -2.0)
        trec = pickle.dumps((0, "k0", torch.FloatTensor), protocol=2)
        traw = struct.pack("<i", 1) + b"\0" * 4 + struct.pack("<q", 2) + struct.pack("<q", 1) + \
            struct.pack("<q", 0)
        members = {"storages": pickle.dumps(1, protocol=2) + rec + raw + pickle.dumps([], protocol=2),
                   "tensors": pickle.dumps(1, protocol=2) + trec + traw,
                   "pickle": b"\x80\x02}X\x01\x00\x00\x00wP0\ns."}   # {'w': tensor 0}
        p = os.path.join(self.tmp, "old.tar")
        with open(p, "wb") as f:
            f.write(legacy_tar(members))
        got = torch.load(p)
        self.assertEqual(got["w"].tolist(), [1.5, -2.0])
        rc, doc, err = self._scan(p)
        self.assertEqual(rc, 0, "exit %r: %s" % (rc, err.strip()))
        self.assertEqual(doc.get("format"), "tar")
        kinds = dict(_names(doc))
        self.assertEqual(kinds.get("torch.FloatStorage"), "weights", kinds)
        self.assertIn("torch.FloatTensor", kinds)

    def test_safetensors_and_npy_stay_safe(self):
        """Files torch.load cannot unpickle: it fails before importing anything."""
        import json as json_mod
        L.require_bin(self)
        header = json_mod.dumps({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}})
        hb = header.encode()
        p = os.path.join(self.tmp, "w.safetensors")
        with open(p, "wb") as f:
            f.write(len(hb).to_bytes(8, "little") + hb + b"\0" * 8)
        rc, doc, err = self._scan(p)
        self.assertEqual((rc, doc.get("format"), doc.get("globals")), (0, "safetensors", []),
                         err)


def struct_float(b):
    import struct
    return struct.unpack("<f", b)[0]


class NothingRuns(unittest.TestCase):
    """Every command on every hostile file, with a live payload control."""

    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="ckpt_scan_")
        cls.sentinels = os.path.join(cls.tmp, "sentinels")
        os.makedirs(cls.sentinels)
        cls.files = os.path.join(cls.tmp, "files")
        os.makedirs(cls.files)
        cls.crafted = craft_payloads(cls.files, cls.sentinels)

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def test_1_payloads_are_live(self):
        """Positive control: Python does run each crafted payload (so the test can fail)."""
        for path, sentinel, loader in self.crafted:
            with self.subTest(file=os.path.basename(path)):
                work = tempfile.mkdtemp(dir=self.tmp)
                python_load(path, loader, work)
                self.assertTrue(os.path.exists(sentinel),
                                "%s: loading with %s did not create %s" % (path, loader, sentinel))
                os.unlink(sentinel)
                shutil.rmtree(work)

    def test_2_crafted_flagged(self):
        L.require_bin(self)
        for path, sentinel, loader in self.crafted:
            with self.subTest(file=os.path.basename(path)):
                rc, out, err = L.run_ckpt(["scan", "--json", path])
                self.assertEqual(rc, 1, "scan %s: exit %r: %s" % (path, rc, err.strip()))
                doc = L.parse_json(self, out, "scan --json " + path)
                self.assertIs(doc.get("safe"), False)
                globs, _ = L.file_pickle_globals(path)
                listed = dict(_names(doc))
                for g in globs:
                    if L.issue_dangerous(g["full"]):
                        hit = [listed[n] for n in _spellings(g) if n in listed]
                        self.assertEqual(hit[:1], ["dangerous"], "scan %s: %s listed as %r" % (
                            path, g["full"], hit))
                self.assertFalse(os.path.exists(sentinel))

    def test_3_crafted_weights_still_readable(self):
        """Issue 2: other commands warn and carry on; the weights can still be extracted."""
        import torch
        L.require_bin(self)
        w = torch.arange(6, dtype=torch.float32).reshape(2, 3)
        want = L.tensor_record(w, ["weight"])
        for path, sentinel, loader in self.crafted:
            if not os.path.basename(path).startswith("torch_"):
                continue
            with self.subTest(file=os.path.basename(path)):
                rc, out, err = L.run_ckpt(["tensors", "--json", "--sha256", path])
                self.assertEqual(rc, 0, "tensors %s: exit %r: %s" % (path, rc, err.strip()))
                doc = L.parse_json(self, out, "scan --json " + path)
                got = [(t.get("path"), t.get("dtype"), t.get("shape"), t.get("sha256"))
                       for t in doc.get("tensors", [])]
                self.assertEqual(got, [(want["path"], want["dtype"], want["shape"],
                                        want["sha256"])])
                self.assertTrue(err.strip(), "tensors %s: no warning on stderr about the "
                                "dangerous global" % path)
                self.assertIn("system", err, "tensors %s: warning does not name the global: %s"
                              % (path, err))

    _guarded = None

    def _guarded_results(self):
        """Every command on every crafted and malicious corpus file, each in its own empty
        working directory, under strace when available. Cached for the tests below."""
        if NothingRuns._guarded is not None:
            return NothingRuns._guarded
        targets = [(p, s) for p, s, _ in self.crafted]
        targets += [(p, None) for p, (k, _) in sorted(CORPUS_KINDS.items())
                    if k in ("malicious", "opaque")]
        jobs = []
        for i, (path, sentinel) in enumerate(targets):
            for j, cmd in enumerate(COMMANDS):
                jobs.append((i, j, path, sentinel, cmd))
        if not STRACE:
            print("note: strace not installed; the execve/connect check is skipped")

        def one(job):
            i, j, path, sentinel, cmd = job
            work = os.path.join(self.tmp, "w_%d_%d" % (i, j))
            os.makedirs(work)
            res = run_guarded(list(cmd) + [path], work, "%d_%d" % (i, j))
            shutil.rmtree(work, ignore_errors=True)
            return job, res, sorted(os.listdir(self.sentinels))

        t0 = time.time()
        with concurrent.futures.ThreadPoolExecutor(2) as ex:
            NothingRuns._guarded = list(ex.map(one, jobs))
        print("guarded runs: %d in %.1f s" % (len(jobs), time.time() - t0))
        return NothingRuns._guarded

    @staticmethod
    def _what(cmd, path, tmp):
        rel = os.path.relpath(path, tmp) if path.startswith(tmp) else os.path.relpath(path,
                                                                                     L.CORPUS)
        return "%s %s" % (" ".join(cmd), rel)

    def test_4_no_payload_runs(self):
        L.require_bin(self)
        fails = L.Failures(self, "hostile files under every command")
        for (i, j, path, sentinel, cmd), res, sentinels in self._guarded_results():
            fails.check(self._check_guarded, self._what(cmd, path, self.tmp), cmd, sentinel,
                        res, sentinels)
        fails.done(show=40)

    def _check_guarded(self, what, cmd, sentinel, res, sentinels):
        rc, out, err, execs, connects, created = res
        # scan must not call a hostile file safe (test_*_flagged check which exit exactly)
        L.check_no_crash(self, rc, out, err, what, allowed=(1, 2) if cmd[0] == "scan"
                         else (0, 2))
        self.assertEqual(created, [], "%s: files appeared in the working directory: %s"
                         % (what, created))
        if sentinel:
            self.assertFalse(os.path.exists(sentinel), "%s: the payload ran (%s exists)"
                             % (what, sentinel))
        self.assertEqual(sentinels, [], "%s: sentinels exist after it ran" % what)
        if STRACE:
            self.assertEqual(len(execs), 1, "%s: execve calls: %s" % (what, execs))
            self.assertEqual(connects, [], "%s: connect calls: %s" % (what, connects))

    def test_5_warns_on_dangerous(self):
        """Issue 2: inspect and tensors warn on stderr when a file names a dangerous global
        (checked where they succeed; the warning must name the global)."""
        L.require_bin(self)
        fails = L.Failures(self, "warnings about dangerous globals")
        for (i, j, path, sentinel, cmd), res, _ in self._guarded_results():
            rc, out, err = res[:3]
            if cmd[0] not in ("inspect", "tensors") or rc != 0:
                continue
            globs, _ = L.file_pickle_globals(path)
            dang = sorted({g["full"] for g in globs if L.issue_dangerous(g["full"])} |
                          {g["raw"] for g in globs if L.issue_dangerous(g["full"])})
            if dang:
                fails.check(self.assertTrue, any(n in err for n in dang),
                            "%s: exit 0 without a warning naming %s; stderr: %r" % (
                                self._what(cmd, path, self.tmp), dang, err[:300]))
        fails.done(show=40)


if __name__ == "__main__":
    L.main("test_scan")
