#!/usr/bin/python3
"""
test_generated.py - the committed case tables are what their generators print today.

tests/pickle_cases/cases.h and tests/zip_cases/cases.h are included by test_pickle.c and
test_zip.c; each is regenerated here (to stdout, under two different PYTHONHASHSEED values)
and must equal the committed file byte for byte, so that a table cannot drift from its
generator and a generator cannot depend on the hash seed.
"""

import os
import shutil
import subprocess
import sys
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))


def _python_for_zip():
    """An interpreter whose zipfile writes force_zip64 local headers as the table has them."""
    probe = "import sys; sys.exit(0 if sys.version_info >= (3, 11, 4) else 1)"
    for exe in (sys.executable, shutil.which("python3")):
        if exe and subprocess.run([exe, "-c", probe]).returncode == 0:
            return exe
    return None


class Generated(unittest.TestCase):
    def regenerate(self, exe, folder):
        script = os.path.join(HERE, folder, "gen_cases.py")
        with open(os.path.join(HERE, folder, "cases.h"), "rb") as f:
            committed = f.read()
        for seed in ("1", "2"):
            env = dict(os.environ, PYTHONHASHSEED=seed, PYTHONDONTWRITEBYTECODE="1")
            r = subprocess.run([exe, "-W", "ignore", script], env=env, capture_output=True,
                               timeout=300)
            self.assertEqual(r.returncode, 0, r.stderr.decode(errors="replace"))
            self.assertTrue(r.stdout == committed,
                            "%s/cases.h differs from `%s %s` (PYTHONHASHSEED=%s); regenerate it"
                            % (folder, exe, script, seed))

    def test_pickle_cases(self):
        self.regenerate(sys.executable, "pickle_cases")

    def test_zip_cases(self):
        exe = _python_for_zip()
        if exe is None:
            self.skipTest("zip_cases/gen_cases.py needs Python >= 3.11.4; none found")
        self.regenerate(exe, "zip_cases")


if __name__ == "__main__":
    unittest.main(verbosity=2)
