"""
ckpt_testlib.py - helpers shared by the Python conformance tests and the fixture generator.

Everything that decides what the *expected* answer is lives here and uses only torch / the
standard library, never ckpt's own output:

  * tensor_sha256 / tensor_record: the hashing rule of issue 2 and of the corpus's
    expected-torch-1.13.json (contiguous little-endian element bytes; bool as one byte;
    bfloat16 via its int16 bit pattern; complex as interleaved real/imag).
  * walk_tensors: every tensor reachable from a torch.load result, with its path (dict keys and
    list/tuple indexes as strings), in the order ckpt must list them.
  * run_ckpt: run the CLI with a timeout, returning (rc, stdout, stderr); rc is negative when a
    signal killed it and TIMED_OUT when it ran past the limit.
  * torch_zip: wrap raw pickle bytes into a torch-like zip archive (root/data.pkl, data/*, version).

torch is imported lazily so that tests which only run ckpt do not pay for it.
"""

import collections
import glob
import hashlib
import json
import os
import subprocess
import sys
import time
import unittest
import zipfile

HERE = os.path.dirname(os.path.abspath(__file__))
TIMED_OUT = "timeout"   # rc value of a run that had to be killed
DEFAULT_TIMEOUT = 10.0


# ---- environment --------------------------------------------------------------------------

def _find_bin():
    env = os.environ.get("CKPT_BIN")
    if env:
        return os.path.abspath(env)
    # Run by hand: take the newest build tree's binary.
    cands = sorted(glob.glob(os.path.join(HERE, "..", "build*", "ckpt")), key=os.path.getmtime)
    return os.path.abspath(cands[-1]) if cands else None


CKPT_BIN = _find_bin()
# The vendored corpus and vectors (tests/data/README.md says where each file comes from).
TEST_DATA = os.path.abspath(os.environ.get("CKPT_TEST_DATA") or os.path.join(HERE, "data"))
CKPT_FIXTURES = os.environ.get("CKPT_FIXTURES")
if CKPT_FIXTURES:
    CKPT_FIXTURES = os.path.abspath(CKPT_FIXTURES)
if not CKPT_FIXTURES and CKPT_BIN:
    CKPT_FIXTURES = os.path.join(os.path.dirname(CKPT_BIN), "fixtures")
CORPUS = os.path.join(TEST_DATA, "corpus")
VECTORS = os.path.join(TEST_DATA, "vectors")
# Environment for ckpt runs: the caller's (sanitizer options included), in the C locale.
RUN_ENV = dict(os.environ, LC_ALL="C")


def require_bin(tc=None):
    """Fail (not skip) when there is no binary: a missing CLI is a failure of the suite."""
    if not CKPT_BIN or not os.path.exists(CKPT_BIN):
        msg = "ckpt binary not found (CKPT_BIN=%r)" % (CKPT_BIN,)
        if tc is not None:
            tc.fail(msg)
        raise RuntimeError(msg)


# ---- running ckpt -------------------------------------------------------------------------

def run_ckpt(args, timeout=DEFAULT_TIMEOUT, cwd=None, env=None, prefix=None):
    """Run `ckpt ARGS`. Returns (rc, stdout, stderr) as (int|TIMED_OUT, str, str).
    prefix: a command to run ckpt under (e.g. strace)."""
    cmd = list(prefix or []) + [CKPT_BIN] + [str(a) for a in args]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=cwd,
                         env=env or RUN_ENV, stdin=subprocess.DEVNULL)
    try:
        out, err = p.communicate(timeout=timeout)
        rc = p.returncode
    except subprocess.TimeoutExpired:
        p.kill()
        out, err = p.communicate()
        rc = TIMED_OUT
    return (rc, out.decode("utf-8", "surrogateescape"), err.decode("utf-8", "surrogateescape"))


def run_json(tc, args, path_for_msg=None, timeout=DEFAULT_TIMEOUT, ok_codes=(0,)):
    """Run ckpt with --json somewhere in args; assert the exit code and parse stdout."""
    rc, out, err = run_ckpt(args, timeout=timeout)
    tc.assertIn(rc, ok_codes, "ckpt %s: exit %r, stderr: %s" % (" ".join(map(str, args)), rc,
                                                                  err.strip()[:2000]))
    try:
        return json.loads(out)
    except ValueError as e:
        tc.fail("ckpt %s: stdout is not one JSON document (%s): %r" %
                (" ".join(map(str, args)), e, out[:500]))


def random_net(arch="resnet18", seed=0, **kw):
    """torchvision's arch(**kw) with every floating-point tensor drawn from N(0, 1): weights
    whose every value tells the layouts apart (not fit for a forward pass: see randomise_bn)."""
    import torch
    import torchvision
    torch.manual_seed(seed)
    m = getattr(torchvision.models, arch)(**kw)
    with torch.no_grad():
        for t in m.state_dict().values():
            if t.is_floating_point():
                t.copy_(torch.randn_like(t))
    return m


def randomise_bn(model, gen):
    """Trained-looking BatchNorm2d statistics and affine parameters (var in [0.5, 2)) from the
    torch.Generator gen, and num_batches_tracked 1000."""
    import torch
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=gen) * 0.1)
                m.running_var.copy_(torch.rand(n, generator=gen) * 1.5 + 0.5)
                m.weight.copy_(torch.rand(n, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(n, generator=gen) * 0.1)
                m.num_batches_tracked.fill_(1000)


class SavingCase(unittest.TestCase):
    """A test case with a temporary folder per class (cls.tmp), for checkpoints written with
    save(name, obj) (torch.save there; returns the path). Needs the ckpt binary."""

    @classmethod
    def setUpClass(cls):
        import tempfile
        require_bin()
        cls.tmp = tempfile.TemporaryDirectory()

    @classmethod
    def tearDownClass(cls):
        cls.tmp.cleanup()

    def path(self, name):
        return os.path.join(self.tmp.name, name)

    def save(self, name, obj):
        import torch
        path = self.path(name)
        torch.save(obj, path)
        return path


def run_python(tc, code, name, ns=None, timeout=60, base=None):
    """Run the Python `ckpt check` printed, as printed: first the `ckpt extract` command a
    comment line names (in a temporary directory; the test fails if it fails), then the code,
    in that directory. base: where a relative file name in the code is (the code then runs
    there, the command's output still goes to the temporary directory). Returns the namespace
    the code ran in."""
    import shlex
    import tempfile
    ns = {} if ns is None else ns
    with tempfile.TemporaryDirectory() as d:
        cmds = [ln for ln in code.splitlines() if ln.startswith("#   ckpt extract ")]
        tc.assertLessEqual(len(cmds), 1, code)
        if "weights.pth" in code:
            tc.assertEqual(len(cmds), 1, code)
        for line in cmds:
            argv = shlex.split(line[len("#   "):])
            tc.assertEqual(argv[:2], ["ckpt", "extract"])
            if base:
                argv[2] = os.path.join(base, argv[2])
                argv[argv.index("-o") + 1] = os.path.join(d, "weights.pth")
            rc, out, err = run_ckpt(argv[1:], timeout=timeout, cwd=d)
            tc.assertEqual(rc, 0, "%s: `%s` failed (exit %r): %s%s" % (name, line[4:], rc,
                                                                        out, err))
        old = os.getcwd()
        os.chdir(base or d)
        try:
            exec(compile(code.replace("'weights.pth'", repr(os.path.join(d, "weights.pth")))
                         if base else code, name, "exec"), ns)
        finally:
            os.chdir(old)
    return ns


def parse_json(tc, out, what):
    try:
        return json.loads(out)
    except ValueError as e:
        tc.fail("%s: stdout is not one JSON document (%s): %r" % (what, e, out[:500]))


class Failures(object):
    """Collects assertion failures over many runs and reports them as one failure, so that a
    broken binary gives a readable summary instead of thousands of tracebacks."""

    def __init__(self, tc, what):
        self.tc, self.what, self.msgs, self.n = tc, what, [], 0

    def check(self, fn, *args, **kw):
        self.n += 1
        try:
            fn(*args, **kw)
        except AssertionError as e:
            self.msgs.append(str(e).strip())

    def done(self, show=25):
        if self.msgs:
            self.tc.fail("%s: %d of %d checks failed; the first %d:\n  %s" % (
                self.what, len(self.msgs), self.n, min(show, len(self.msgs)),
                "\n  ".join(m.replace("\n", "\n    ") for m in self.msgs[:show])))


def check_clean_error(tc, rc, out, err, path, what=""):
    """The exit-2 contract: one stderr line `ckpt: error: PATH: ...`, empty stdout."""
    where = "%s %s" % (what, path)
    tc.assertEqual(rc, 2, "%s: expected exit 2, got %r; stderr: %s" % (where, rc, err[:500]))
    tc.assertEqual(out, "", "%s: stdout not empty on error: %r" % (where, out[:300]))
    lines = err.splitlines()
    tc.assertEqual(len(lines), 1, "%s: expected one stderr line, got %d: %r" % (where, len(lines),
                                                                             err[:800]))
    tc.assertTrue(err.endswith("\n"), "%s: stderr line not newline-terminated: %r" % (where, err))
    tc.assertTrue(lines[0].startswith("ckpt: error: "),
                  "%s: stderr does not start 'ckpt: error: ': %r" % (where, lines[0]))
    tc.assertIn(str(path), lines[0], "%s: stderr does not name the file: %r" % (where, lines[0]))


def check_no_crash(tc, rc, out, err, what, allowed=(0, 1, 2)):
    """Never a signal, never a hang; exit 2 carries a diagnostic."""
    tc.assertNotEqual(rc, TIMED_OUT, "%s: ran past the time limit" % what)
    tc.assertIsInstance(rc, int)
    tc.assertGreaterEqual(rc, 0, "%s: killed by signal %d; stderr: %s" % (what, -rc, err[-1500:]))
    tc.assertIn(rc, allowed, "%s: exit %d; stderr: %s" % (what, rc, err[-1500:]))
    if rc == 2:
        tc.assertTrue(err.strip(), "%s: exit 2 with empty stderr" % what)
    tc.assertNotIn("AddressSanitizer", err, "%s: ASan report" % what)
    tc.assertNotIn("runtime error:", err, "%s: UBSan report" % what)


# ---- expected values from torch -----------------------------------------------------------

def same_sd(tc, got, want, what):
    """got (a torch.load result) equals the state dict want bit for bit, _metadata included."""
    tc.assertEqual(list(got.keys()), list(want.keys()), what)
    for k, t in want.items():
        g = got[k]
        tc.assertEqual(g.dtype, t.dtype, "%s: %s" % (what, k))
        tc.assertEqual(tuple(g.shape), tuple(t.shape), "%s: %s" % (what, k))
        tc.assertEqual(tensor_bytes(g), tensor_bytes(t), "%s: %s" % (what, k))
    tc.assertEqual(dict(getattr(got, "_metadata", {})), dict(want._metadata), what)


def dtype_name(dt):
    return str(dt).replace("torch.", "")


def tensor_bytes(t):
    """Contiguous little-endian bytes of a tensor's elements in row-major order."""
    import torch
    t = t.detach()
    if t.is_quantized:
        raise ValueError("quantized tensors are not hashed")
    t = t.contiguous()
    if t.dtype == torch.bfloat16:
        t = t.view(torch.int16)
    elif t.dtype in (torch.complex64, torch.complex128):
        t = torch.view_as_real(t)
    if t.numel() == 0:
        return b""
    a = t.numpy()
    if a.dtype.byteorder == ">":
        a = a.byteswap().newbyteorder()
    return a.tobytes(order="C")


def tensor_sha256(t):
    return hashlib.sha256(tensor_bytes(t)).hexdigest()


def storage_id(t):
    """An identity for t's storage valid while the object lives."""
    try:
        return t.untyped_storage().data_ptr(), t.untyped_storage().nbytes()
    except AttributeError:
        return t.storage().data_ptr(), t.storage().nbytes()


def tensor_record(t, path):
    return {
        "path": list(path),
        "dtype": dtype_name(t.dtype),
        "shape": list(t.shape),
        "stride": list(t.stride()),
        "storage_offset": int(t.storage_offset()),
        "sha256": tensor_sha256(t),
        "storage_nbytes": int(storage_id(t)[1]),
        "requires_grad": bool(t.requires_grad),
        "is_parameter": type(t).__name__ == "Parameter",
    }


def _key_str(k):
    if isinstance(k, bytes):
        return k.decode("latin-1")
    if isinstance(k, bool):
        return "True" if k else "False"
    return str(k)


def walk_tensors(obj, path=(), out=None, seen_ids=None):
    """Every tensor reachable from obj in traversal order: dicts (and OrderedDicts) in key
    order, lists and tuples by index. Other objects are not entered. A tensor object met
    twice is listed twice (once per path), as ckpt lists what is reachable by path."""
    import torch
    if out is None:
        out = []
    import numpy as np
    if isinstance(obj, torch.Tensor):
        out.append((list(path), obj))
    elif isinstance(obj, np.ndarray):   # a tensor to ckpt (issue 8): over its own copy
        out.append((list(path), torch.from_numpy(obj.astype(obj.dtype.newbyteorder("=")))))
    elif isinstance(obj, dict):
        for k, v in obj.items():
            walk_tensors(v, path + (_key_str(k),), out)
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            walk_tensors(v, path + (str(i),), out)
    return out


def storage_groups(pairs):
    """For the (path, tensor) list: index lists of tensors that share one storage (len >= 2)."""
    groups = collections.OrderedDict()
    for i, (_, t) in enumerate(pairs):
        if storage_id(t)[1] == 0:
            continue   # empty storages have no identity worth comparing (data_ptr 0)
        groups.setdefault(storage_id(t), []).append(i)
    return [g for g in groups.values() if len(g) > 1]


def load_expected(path):
    with open(path) as f:
        return json.load(f)


# ---- describing a loaded object (for `ckpt inspect --json`) ----------------------------------

def describe(v):
    """A neutral JSON description of a torch.load result: {"type": ..., ...}. Types follow
    ckpt_type_name in ckpt.h; class is the Python class when it is not the plain builtin."""
    import argparse
    import math
    import numpy as np
    import torch
    if isinstance(v, torch.Tensor):
        return {"type": "tensor", "dtype": dtype_name(v.dtype), "shape": list(v.shape),
                "is_parameter": isinstance(v, torch.nn.Parameter)}
    if isinstance(v, torch.Size):
        return {"type": "tuple", "class": "torch.Size", "items": [describe(x) for x in v]}
    if isinstance(v, torch.dtype):
        return {"type": "global", "name": str(v)}
    if isinstance(v, torch.device):
        return {"type": "object", "class": "torch.device", "repr": str(v)}
    if isinstance(v, np.generic):
        cls = "numpy." + type(v).__name__
        if isinstance(v, np.bool_):
            return {"type": "bool", "class": cls, "value": bool(v)}
        if isinstance(v, np.integer):
            return {"type": "int", "class": cls, "value": int(v)}
        if isinstance(v, np.floating):
            return {"type": "float", "class": cls, "value": float(v)}
        return {"type": "object", "class": cls}
    if isinstance(v, np.ndarray):   # ckpt reads numpy arrays as tensors (issue 8)
        return {"type": "tensor", "class": "numpy.ndarray",
                "dtype": dtype_name(torch.from_numpy(v.astype(v.dtype.newbyteorder("="))).dtype),
                "shape": list(v.shape), "is_parameter": False}
    if v is None:
        return {"type": "none"}
    if isinstance(v, bool):
        return {"type": "bool", "value": v}
    if isinstance(v, int):
        return {"type": "int", "value": v}
    if isinstance(v, float):
        return {"type": "float", "value": v if math.isfinite(v) else repr(v)}
    if isinstance(v, complex):
        return {"type": "complex", "value": [v.real, v.imag]}
    if isinstance(v, str):
        return {"type": "str", "value": v}
    if isinstance(v, (bytes, bytearray)):
        return {"type": "bytes", "hex": bytes(v).hex()}
    if isinstance(v, dict):
        node = {"type": "dict", "items": [[_key_str(k), type(k).__name__, describe(x)]
                                          for k, x in v.items()]}
        if type(v) is not dict:
            node["class"] = type(v).__module__ + "." + type(v).__qualname__
        md = getattr(v, "_metadata", None)
        if md is not None:
            node["metadata_len"] = len(md)
        return node
    if isinstance(v, list):
        return {"type": "list", "items": [describe(x) for x in v]}
    if isinstance(v, tuple):
        return {"type": "tuple", "items": [describe(x) for x in v]}
    if isinstance(v, (set, frozenset)):
        node = {"type": "set", "items": sorted((describe(x) for x in v), key=json.dumps)}
        if isinstance(v, frozenset):
            node["class"] = "builtins.frozenset"
        return node
    if isinstance(v, argparse.Namespace):
        return {"type": "object", "class": "argparse.Namespace", "state": describe(vars(v))}
    return {"type": "object", "class": type(v).__module__ + "." + type(v).__qualname__}


# ---- globals named by pickles (pickletools, never unpickling) ------------------------------

_STR_OPS = {"STRING", "BINSTRING", "SHORT_BINSTRING", "UNICODE", "BINUNICODE",
            "SHORT_BINUNICODE", "BINUNICODE8"}


class _Opaque(object):
    __slots__ = ()


_OPAQUE = _Opaque()


def _py3_name(module, name, proto):
    """Python's fix_imports mapping, applied as Unpickler.find_class does for protocol < 3."""
    if proto >= 3:
        return module, name
    import _compat_pickle
    if (module, name) in _compat_pickle.NAME_MAPPING:
        return _compat_pickle.NAME_MAPPING[(module, name)]
    return _compat_pickle.IMPORT_MAPPING.get(module, module), name


def pickle_globals(data, start=0, where="pickle"):
    """Every global named by the pickle(s) starting at data[start:], back to back, found by a
    symbolic run of the opcode stream (strings and memo tracked, nothing imported). Returns
    (globals, end, error): globals as dicts {module, name, full, raw, offset, where}, where full
    is the Python 3 spelling and raw the file's; a STACK_GLOBAL whose operands are not both
    strings gives module '?' and name '?'. Stops at the first undecodable opcode (error)."""
    import io
    import pickletools
    out = []
    f = io.BytesIO(data)
    f.seek(start)
    error = None
    end = start
    while f.tell() < len(data):
        stack, marks, memo, proto = [], [], {}, 0
        here = f.tell()
        try:
            for op, arg, pos in pickletools.genops(f):
                n = op.name

                def record(mod, nm):
                    if isinstance(mod, str) and isinstance(nm, str):
                        m3, n3 = _py3_name(mod, nm, proto)
                        out.append({"module": m3, "name": n3, "full": m3 + "." + n3,
                                    "raw": mod + "." + nm, "offset": pos, "where": where})
                    else:
                        out.append({"module": "?", "name": "?", "full": "?", "raw": "?",
                                    "offset": pos, "where": where})

                if n == "PROTO":
                    proto = arg
                    continue
                if n == "MARK":
                    marks.append(len(stack))
                    continue
                if n in _STR_OPS:
                    stack.append(arg if isinstance(arg, str) else arg.decode("latin-1"))
                    continue
                if n in ("GLOBAL", "INST"):
                    mod, _, nm = arg.partition(" ")
                    record(mod, nm)
                    if n == "INST":
                        del stack[marks.pop() if marks else 0:]
                    stack.append(_OPAQUE)
                    continue
                if n == "STACK_GLOBAL":
                    nm = stack.pop() if stack else None
                    mod = stack.pop() if stack else None
                    record(mod, nm)
                    stack.append(_OPAQUE)
                    continue
                if n in ("PUT", "BINPUT", "LONG_BINPUT"):
                    memo[arg] = stack[-1] if stack else _OPAQUE
                    continue
                if n == "MEMOIZE":
                    memo[len(memo)] = stack[-1] if stack else _OPAQUE
                    continue
                if n in ("GET", "BINGET", "LONG_BINGET"):
                    stack.append(memo.get(arg, _OPAQUE))
                    continue
                before = op.stack_before
                if pickletools.markobject in before:
                    k = before.index(pickletools.markobject)
                    del stack[marks.pop() if marks else 0:]
                    for _ in range(k):
                        if stack:
                            stack.pop()
                else:
                    for _ in range(len(before)):
                        if stack:
                            stack.pop()
                stack.extend([_OPAQUE] * len(op.stack_after))
            end = f.tell()
        except Exception as e:   # truncated or invalid opcode: keep what was found
            error = "%s at %d" % (e, here)
            break
        # Legacy torch files and the like: stop when the next bytes are not a pickle.
        nxt = data[f.tell():f.tell() + 1]
        if nxt not in (b"\x80",):
            break
    return out, end, error


def zip_entries_raw(blob):
    """(name, bytes) of every zip entry of the archive in blob, read from the local headers so
    that entries flagged as encrypted or with bad CRCs are still returned (as picklescan does).
    DEFLATE entries are inflated; other methods skipped."""
    import io
    import struct
    import zlib
    res = []
    try:
        infos = zipfile.ZipFile(io.BytesIO(blob)).infolist()
    except Exception:
        return res
    for zi in infos:
        off = zi.header_offset
        if blob[off:off + 4] != b"PK\x03\x04":
            continue
        nlen, xlen = struct.unpack("<HH", blob[off + 26:off + 30])
        start = off + 30 + nlen + xlen
        raw = blob[start:start + zi.compress_size]
        if zi.compress_type == zipfile.ZIP_DEFLATED:
            try:
                raw = zlib.decompressobj(-15).decompress(raw)
            except zlib.error:
                continue
        elif zi.compress_type != zipfile.ZIP_STORED:
            continue
        res.append((zi.filename, raw))
    return res


def bytes_pickle_globals(data, where="pickle"):
    """Globals named by any pickle data holds: a bare pickle (or several back to back, as in the
    legacy torch format), every zip entry that is a pickle or a .npy, or an object-array .npy.
    Returns (globals, n_pickles_found)."""
    import struct
    if data[:4] == b"PK\x03\x04":
        found, n = [], 0
        for name, raw in zip_entries_raw(data):
            if raw[:6] == b"\x93NUMPY":
                g, k = bytes_pickle_globals(raw, where=name)
            elif raw[:1] == b"\x80" or name.endswith((".pkl", ".pickle")):
                g, end, err = pickle_globals(raw, where=name)
                k = 1 if (end > 0 or g) else 0
            else:
                continue
            found += g
            n += k
        return found, n
    if data[:6] == b"\x93NUMPY":
        if len(data) < 12:
            return [], 0
        if data[6] == 1:
            hl, hstart = struct.unpack("<H", data[8:10])[0], 10
        else:
            hl, hstart = struct.unpack("<I", data[8:12])[0], 12
        if b"'|O'" not in data[hstart:hstart + hl]:
            return [], 0
        g, end, err = pickle_globals(data, hstart + hl, where=where)
        return g, 1
    g, end, err = pickle_globals(data, 0, where=where)
    return g, (1 if (end > 0 or g) else 0)


def file_pickle_globals(path):
    with open(path, "rb") as fh:
        return bytes_pickle_globals(fh.read(), where=os.path.basename(path))


# Globals a weights file or a harmless training checkpoint needs (PyTorch 2.6's weights_only
# allowlist as listed in docs/FORMAT.md §4.4, plus the data classes issue 2 names). Used only to
# decide which globals in the hostile corpus must NOT be reported as weights/data.
def known_ok_global(full):
    mod, _, name = full.rpartition(".")
    if full in ("collections.OrderedDict", "collections.Counter", "collections.defaultdict",
                "torch.nn.parameter.Parameter", "torch.Size", "torch.Tensor", "torch.device",
                "torch.serialization._get_layout", "_codecs.encode", "builtins.set",
                "builtins.frozenset", "builtins.bytearray", "builtins.complex", "builtins.bytes",
                "argparse.Namespace", "numpy.dtype", "numpy.ndarray",
                "numpy.core.multiarray.scalar", "numpy._core.multiarray.scalar",
                "numpy.core.multiarray._reconstruct", "numpy._core.multiarray._reconstruct"):
        return True
    if mod == "torch._utils" and name.startswith("_rebuild_"):
        return True
    if mod == "torch._tensor" and name == "_rebuild_from_type_v2":
        return True
    if mod == "torch" and (name.endswith("Storage") or name in DTYPE_NAMES):
        return True
    return False


DTYPE_NAMES = ("float32", "float64", "float16", "bfloat16", "int8", "int16", "int32", "int64",
               "uint8", "bool", "complex32", "complex64", "complex128", "float", "double", "half",
               "long", "int", "short", "cfloat", "cdouble", "quint8", "qint8", "qint32")

# What issue 2 names as known to execute code or touch the system.
ISSUE_DANGEROUS_EXACT = {"os.system", "posix.system", "nt.system", "builtins.eval",
                         "builtins.exec", "builtins.__import__", "builtins.getattr",
                         "pickle.loads", "_pickle.loads"}
ISSUE_DANGEROUS_MODULES = ("subprocess", "runpy", "socket")


def issue_dangerous(full):
    mod = full.rpartition(".")[0]
    return full in ISSUE_DANGEROUS_EXACT or mod in ISSUE_DANGEROUS_MODULES or \
        any(mod.startswith(m + ".") for m in ISSUE_DANGEROUS_MODULES)


def scan_entry_name(e):
    """'module.name' of one entry of `ckpt scan --json`'s globals list."""
    name = str(e.get("name", ""))
    mod = e.get("module")
    if mod and not name.startswith(str(mod) + "."):
        return "%s.%s" % (mod, name)
    return name


# ---- building files by hand -----------------------------------------------------------------

def torch_zip(path, pkl, storages=None, root="archive", version=b"3\n",
              compression=zipfile.ZIP_STORED):
    """A torch-like zip: root/data.pkl, root/data/<key> for each storage, root/version."""
    with zipfile.ZipFile(path, "w", compression) as z:
        z.writestr(root + "/data.pkl", pkl)
        for key, data in (storages or {}).items():
            z.writestr(root + "/data/" + key, data)
        if version is not None:
            z.writestr(root + "/version", version)


# ---- reporting ----------------------------------------------------------------------------

def main(name):
    """unittest.main with a closing line and a non-zero exit on failure."""
    t0 = time.time()
    prog = unittest.main(exit=False, verbosity=int(os.environ.get("CKPT_TEST_VERBOSE", "1")))
    res = prog.result
    ok = res.wasSuccessful()
    print("%s: %s: %d run, %d failures, %d errors, %d skipped in %.1f s" % (
        name, "PASS" if ok else "FAIL", res.testsRun, len(res.failures), len(res.errors),
        len(res.skipped), time.time() - t0))
    sys.stdout.flush()
    sys.exit(0 if ok else 1)
