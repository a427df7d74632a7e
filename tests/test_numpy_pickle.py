#!/usr/bin/python3
"""
test_numpy_pickle.py - numpy arrays in plain pickles are tensors (issue 8): every numpy dtype
ckpt has, C and Fortran order, both byte orders, scalars and empty arrays, pickled by Python 3
at protocols 0 to 5 (ndarray.__reduce__'s _reconstruct + BUILD state, protocol 5's
_frombuffer) and as Python 2 wrote them (the data and the dtype codes as py2 str: BINSTRING,
SHORT_BINSTRING, or protocol 0's quoted STRING), which numpy reads back with
pickle.load(f, encoding='latin1'). Each array ckpt reads (through the Python module over
libckpt) must equal numpy's own load bit for bit, and `ckpt tensors --json` must list it with
its dtype and shape.
"""

import json
import os
import pickle
import shutil
import struct
import sys
import tempfile
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "python"))
import ckpt_testlib as L  # noqa: E402

if not os.environ.get("CKPT_LIBRARY") and L.CKPT_BIN:
    os.environ["CKPT_LIBRARY"] = os.path.join(os.path.dirname(L.CKPT_BIN), "libckpt.so")


def _preload():
    """In a sanitizer build, re-exec under the runtimes libckpt.so was linked with (as
    test_python.py does): python3 itself is not built with them."""
    san = []
    try:
        cache = os.path.join(os.path.dirname(L.CKPT_BIN), "CMakeCache.txt")
        with open(cache) as f:
            for line in f:
                if line.startswith("CKPT_SANITIZE:"):
                    san = [s for s in line.split("=", 1)[1].strip().split(",") if s]
    except (OSError, TypeError):
        pass
    if not san or os.environ.get("CKPT_TEST_PRELOADED"):
        return
    import subprocess
    libs = [subprocess.run(["gcc", "-print-file-name=lib%s.so" %
                            {"address": "asan", "undefined": "ubsan"}.get(s, s)],
                           capture_output=True, text=True).stdout.strip() for s in san]
    env = dict(os.environ, CKPT_TEST_PRELOADED="1", LD_PRELOAD=":".join(libs),
               ASAN_OPTIONS="detect_leaks=0:" + os.environ.get("ASAN_OPTIONS", ""))
    os.execve(sys.executable, [sys.executable] + sys.argv, env)


_preload()

import numpy as np  # noqa: E402

CODES = ["f8", "f4", "f2", "i8", "i4", "i2", "i1", "u8", "u4", "u2", "u1", "b1", "c8", "c16"]
CKPT_NAMES = {"f8": "float64", "f4": "float32", "f2": "float16", "i8": "int64", "i4": "int32",
              "i2": "int16", "i1": "int8", "u8": "uint64", "u4": "uint32", "u2": "uint16",
              "u1": "uint8", "b1": "bool", "c8": "complex64", "c16": "complex128"}


def arrays():
    """name -> array: every dtype, both byte orders, C and F order, odd shapes."""
    rng = np.random.default_rng(8)
    out = {}
    for code in CODES:
        for bo in ("<", ">") if code[1:] not in ("1",) else ("|",):
            dt = np.dtype(bo + code if bo != "|" else code)
            raw = rng.integers(0, 256, size=2 * 3 * 4 * dt.itemsize, dtype=np.uint8)
            a = raw.view(dt.newbyteorder("=")).astype(dt) if code != "b1" else raw[:24] > 127
            a = a.reshape(2, 3, 4)
            tag = "%s%s" % ({"<": "le", ">": "be", "|": ""}[bo], code)
            out[tag + "_c"] = a
            out[tag + "_f"] = np.asfortranarray(a[:, :, 1])
            out[tag + "_scalar"] = np.array(a.reshape(-1)[5])
            out[tag + "_empty"] = np.zeros((0, 3), dtype=dt)
    return out


class Py2Pickler(pickle._Pickler):
    """Writes bytes and (ASCII) str as Python 2's str: SHORT_BINSTRING/BINSTRING, or STRING at
    protocol 0 -- what a Python 2 pickle of a numpy array holds."""
    dispatch = pickle._Pickler.dispatch.copy()

    def save_py2(self, obj):
        b = obj.encode("latin-1") if isinstance(obj, str) else obj
        if self.proto == 0:
            text = repr(b)[1:]
            self.write(pickle.STRING + text.encode("ascii") + b"\n")
        elif len(b) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(b)]) + b)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(b)) + b)
        self.memoize(obj)

    dispatch[bytes] = save_py2
    dispatch[str] = save_py2


class NumpyPickles(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        L.require_bin()
        cls.tmp = tempfile.mkdtemp(prefix="ckpt-numpy-")
        cls.arrays = arrays()

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def compare(self, path, encoding="ASCII"):
        import ckpt
        with open(path, "rb") as f:
            want = pickle.load(f, encoding=encoding)    # numpy's own load
        self.assertEqual(sorted(want), sorted(self.arrays))
        with ckpt.open(path) as f:
            got = dict(f.tensors())
            self.assertEqual(sorted(k[0] for k in got), sorted(want))
            for name, a in want.items():
                t = got[(name,)]
                self.assertEqual(t.dtype, CKPT_NAMES[a.dtype.str[1:]], name)
                self.assertEqual(t.shape, a.shape, name)
                b = np.asarray(t.numpy())
                le = np.ascontiguousarray(a).astype(a.dtype.newbyteorder("<"))
                self.assertEqual(np.ascontiguousarray(b).tobytes(), le.tobytes(), name)
        rc, out, err = L.run_ckpt(["tensors", path, "--json"], timeout=60)
        self.assertEqual(rc, 0, err)
        listed = {tuple(t["path"]): t for t in json.loads(out)["tensors"]}
        for name, a in want.items():
            self.assertEqual(listed[(name,)]["dtype"], CKPT_NAMES[a.dtype.str[1:]], name)
            self.assertEqual(listed[(name,)]["shape"], list(a.shape), name)

    def test_python3_protocols(self):
        for proto in range(0, 6):
            path = os.path.join(self.tmp, "py3-%d.pkl" % proto)
            with open(path, "wb") as f:
                pickle.dump(self.arrays, f, protocol=proto)
            with self.subTest(protocol=proto):
                self.compare(path)

    def test_python2_strings(self):
        for proto in (0, 1, 2):
            path = os.path.join(self.tmp, "py2-%d.pkl" % proto)
            with open(path, "wb") as f:
                Py2Pickler(f, protocol=proto).dump(self.arrays)
            with open(path, "rb") as f:
                self.assertNotIn(b"_codecs", f.read())   # really py2 str, not encoded bytes
            with self.subTest(protocol=proto):
                self.compare(path, encoding="latin1")

    def test_truncated_data_is_corrupt(self):
        """An array whose data is shorter than its shape says: an error, not a tensor."""
        a = np.arange(6, dtype="<f4")
        raw = a.tobytes()
        state = list(a.__reduce__()[2])
        state[4] = raw[:-4]

        class Short:
            def __reduce__(self):
                r = a.__reduce__()
                return (r[0], r[1], tuple(state))
        path = os.path.join(self.tmp, "short.pkl")
        with open(path, "wb") as f:
            pickle.dump({"a": Short()}, f, protocol=4)
        rc, out, err = L.run_ckpt(["tensors", path], timeout=30)
        self.assertEqual(rc, 2, (out, err))
        self.assertIn("numpy array", err)


if __name__ == "__main__":
    unittest.main()
