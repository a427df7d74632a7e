#!/usr/bin/env python3
"""`cmake --install` gives usable libraries: a program finds libckpt (pkg-config ckpt,
find_package's ckpt::ckpt) and libckpt-reader (pkg-config ckpt-reader, ckpt::reader), links, and
reads a torch file (tests/data/vectors/two.pt, whose 2 tensors torch reads). It also prints whether
resnet18 can be run: yes with libckpt, no with the reader, which has no inference. The install goes
to a temporary prefix; the build tree is CKPT_BIN's folder."""
import os
import shutil
import subprocess
import sys
import tempfile
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import ckpt_testlib as lib  # noqa: E402

PROGRAM = r"""
#include <ckpt.h>
#include <stdio.h>
int main(int argc, char **argv)
{
    ckpt_file *f;
    ckpt_error err;
    if (argc < 2 || ckpt_open(argv[1], NULL, &f, &err) != CKPT_OK)
        return 1;
    printf("%s %zu %d\n", ckpt_format_name(ckpt_file_format(f)), ckpt_value_len(ckpt_root(f)),
           ckpt_arch_runnable(ckpt_arch_by_name("resnet18")));
    ckpt_close(f);
    return 0;
}
"""

CONSUMER = """cmake_minimum_required(VERSION 3.20)
project(consumer C)
find_package(ckpt REQUIRED)
add_executable(consumer main.c)
target_link_libraries(consumer PRIVATE ckpt::ckpt)
add_executable(reader main.c)
target_link_libraries(reader PRIVATE ckpt::reader)
"""

# what the program prints with each library
EXPECTED = {"ckpt": "zip 2 1", "ckpt-reader": "zip 2 0"}


def sanitizer_flags(build):
    """A sanitizer build's library needs its consumer built with the same runtime."""
    with open(os.path.join(build, "CMakeCache.txt")) as f:
        for line in f:
            if line.startswith("CKPT_SANITIZE:") and line.split("=", 1)[1].strip():
                return ["-fsanitize=" + line.split("=", 1)[1].strip()]
    return []


class Install(unittest.TestCase):
    def test_install_and_use(self):
        build = os.path.dirname(os.environ["CKPT_BIN"])
        two = os.path.join(lib.VECTORS, "two.pt")
        with tempfile.TemporaryDirectory() as d:
            prefix = os.path.join(d, "prefix")
            subprocess.run(["cmake", "--install", build, "--prefix", prefix], check=True,
                           stdout=subprocess.DEVNULL)
            src = os.path.join(d, "src")
            os.makedirs(src)
            with open(os.path.join(src, "main.c"), "w") as f:
                f.write(PROGRAM)
            with open(os.path.join(src, "CMakeLists.txt"), "w") as f:
                f.write(CONSUMER)
            libdirs = [os.path.join(prefix, x) for x in ("lib", "lib64", "lib/x86_64-linux-gnu")]
            env = dict(os.environ, LD_LIBRARY_PATH=":".join(libdirs),
                       PKG_CONFIG_PATH=":".join(os.path.join(x, "pkgconfig") for x in libdirs))
            # pkg-config
            san = sanitizer_flags(build)
            for pc, expected in EXPECTED.items():
                flags = subprocess.run(["pkg-config", "--cflags", "--libs", pc], env=env,
                                       check=True, capture_output=True, text=True).stdout.split()
                self.assertIn("-l" + pc, flags)
                exe = os.path.join(d, "pc-" + pc)
                subprocess.run(["cc"] + san + [os.path.join(src, "main.c"), "-o", exe] + flags,
                               check=True)
                out = subprocess.run([exe, two], env=env, check=True, capture_output=True,
                                     text=True)
                self.assertEqual(out.stdout.strip(), expected, pc)
            # find_package(ckpt)
            b = os.path.join(d, "b")
            subprocess.run(["cmake", "-S", src, "-B", b, "-DCMAKE_PREFIX_PATH=" + prefix,
                            "-DCMAKE_C_FLAGS=" + " ".join(san)],
                           check=True, stdout=subprocess.DEVNULL)
            subprocess.run(["cmake", "--build", b], check=True, stdout=subprocess.DEVNULL)
            for exe, expected in (("consumer", EXPECTED["ckpt"]),
                                  ("reader", EXPECTED["ckpt-reader"])):
                out = subprocess.run([os.path.join(b, exe), two], env=env, check=True,
                                     capture_output=True, text=True)
                self.assertEqual(out.stdout.strip(), expected, exe)
            self.assertTrue(os.path.exists(os.path.join(prefix, "bin", "ckpt")))


if __name__ == "__main__":
    if not shutil.which("pkg-config"):
        sys.exit("test_install: pkg-config is missing")
    lib.main("test_install")
