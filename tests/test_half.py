#!/usr/bin/python3
"""
test_half.py - the library's one float16/bfloat16 conversion, against PyTorch 1.13.

Every one of the 65,536 float16 and bfloat16 bit patterns (NaNs with their payloads, signalling
and quiet, subnormals, infinities) is widened to float32 by each of ckpt's routes and compared,
bit for bit, with torch's `.float()`:
  * ckpt_tensor_read (the Python module's `Tensor.numpy("float32")`),
  * ckpt_convert (`ckpt extract --dtype float32`, read back with torch.load).
A float16 signalling NaN such as 0x7D01 becomes 0x7FE02000 in torch (quiet bit set, payload
kept); bfloat16 NaNs keep their bits.
"""

import os
import subprocess
import sys
import tempfile
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
PYDIR = os.path.join(os.path.dirname(HERE), "python")
sys.path.insert(0, HERE)
import ckpt_testlib as lib  # noqa: E402

BUILD = os.path.dirname(lib.CKPT_BIN) if lib.CKPT_BIN else None
if not os.environ.get("CKPT_LIBRARY") and BUILD:
    os.environ["CKPT_LIBRARY"] = os.path.join(BUILD, "libckpt.so")
sys.path.insert(0, PYDIR)
from test_python import _preload  # noqa: E402  (re-exec under a sanitizer build's runtimes)


def all_patterns(dtype):
    import torch
    return torch.arange(-32768, 32768, dtype=torch.int32).to(torch.int16).view(dtype)


def bits(t):
    """float32 tensor or array -> list of uint32 bit patterns."""
    import numpy as np
    import torch
    if isinstance(t, torch.Tensor):
        t = t.contiguous().numpy()
    return np.ascontiguousarray(t, dtype=np.float32).view(np.uint32).tolist()


def mismatches(got, want, src):
    return ["%04x: %08x, torch %08x" % (s & 0xFFFF, g, w)
            for s, g, w in zip(src, got, want) if g != w][:5]


class Half(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        import torch
        lib.require_bin()
        cls.tmp = tempfile.TemporaryDirectory()
        cls.src = os.path.join(cls.tmp.name, "half.pt")
        cls.sd = {"f16": all_patterns(torch.float16), "bf16": all_patterns(torch.bfloat16)}
        # strided views too: ckpt_tensor_read and ckpt_convert gather them element by element
        cls.sd["f16_t"] = cls.sd["f16"].view(256, 256).t()
        cls.sd["bf16_t"] = cls.sd["bf16"].view(256, 256).t()
        torch.save(cls.sd, cls.src)
        cls.raw = {k: v.contiguous().view(torch.int16).flatten().tolist()
                   for k, v in cls.sd.items()}

    @classmethod
    def tearDownClass(cls):
        cls.tmp.cleanup()

    def expect(self, key):
        return bits(self.sd[key].float().flatten())

    def test_tensor_read(self):
        import ckpt
        with ckpt.open(self.src) as f:
            root = f.root
            for key in self.sd:
                got = bits(root[key].numpy("float32").flatten())
                want = self.expect(key)
                self.assertEqual(mismatches(got, want, self.raw[key]), [], key)

    def test_convert(self):
        import torch
        out = os.path.join(self.tmp.name, "f32.pth")
        r = subprocess.run([lib.CKPT_BIN, "extract", self.src, "-o", out, "--no-check",
                            "--dtype", "float32"], capture_output=True, text=True)
        self.assertEqual(r.returncode, 0, r.stderr)
        got = torch.load(out)
        for key in self.sd:
            self.assertEqual(got[key].dtype, torch.float32)
            self.assertEqual(mismatches(bits(got[key].flatten()), self.expect(key),
                                        self.raw[key]), [], key)


if __name__ == "__main__":
    _preload()
    lib.main("test_half")
