#!/usr/bin/env python3
"""libckpt-reader is the library for programs that only read checkpoints: its dynamic section
must not name libjpeg, libpng, oneDNN or an OpenMP runtime, and it must leave no ckpt symbol to
be found elsewhere (the inference code it lacks). libckpt.so, which has them, is the control:
the same check must find them there. The build tree is CKPT_BIN's folder."""
import os
import re
import shutil
import subprocess
import sys
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import ckpt_testlib as lib  # noqa: E402

IMAGE_AND_INFERENCE = re.compile(r"^lib(jpeg|png|dnnl|gomp|omp|iomp)")


def needed(path):
    """The NEEDED entries of path's dynamic section, as readelf prints them."""
    out = subprocess.run(["readelf", "-d", path], check=True, capture_output=True,
                         text=True).stdout
    return re.findall(r"\(NEEDED\)\s+Shared library: \[([^\]]+)\]", out)


def undefined_ckpt(path):
    out = subprocess.run(["nm", "-D", "--undefined-only", path], check=True,
                         capture_output=True, text=True).stdout
    return [line.split()[-1] for line in out.splitlines() if "ckpt" in line]


class ReaderDeps(unittest.TestCase):
    def setUp(self):
        self.build = os.path.dirname(os.environ["CKPT_BIN"])
        self.reader = os.path.join(self.build, "libckpt-reader.so")
        self.full = os.environ.get("CKPT_LIBRARY", os.path.join(self.build, "libckpt.so"))

    def test_reader_has_no_image_or_inference_libraries(self):
        libs = needed(self.reader)
        self.assertIn("libz.so.1", libs)        # the parse of readelf's output works
        self.assertEqual([x for x in libs if IMAGE_AND_INFERENCE.match(x)], [])
        self.assertEqual(undefined_ckpt(self.reader), [])

    def test_full_library_has_them(self):
        libs = needed(self.full)
        for name in ("libjpeg", "libpng"):
            self.assertTrue(any(x.startswith(name) for x in libs), (name, libs))


if __name__ == "__main__":
    if not shutil.which("readelf") or not shutil.which("nm"):
        sys.exit("test_reader_deps: readelf and nm (binutils) are needed")
    lib.main("test_reader_deps")
