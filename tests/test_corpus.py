#!/usr/bin/python3
"""
test_corpus.py - the external corpus (tests/data/corpus) against Debian's PyTorch 1.13.

  * Every entry of expected-torch-1.13.json with "tensors": `ckpt tensors --json --sha256 FILE`
    lists the same (path, dtype, shape, sha256) in the same order; `ckpt inspect` reads it too.
  * Every entry with "error" (torch refuses the file): ckpt exits 2 with one stderr line
    `ckpt: error: FILE: ...` and nothing on stdout, for tensors and inspect.
  * .safetensors entries: while ckpt refuses safetensors (exit 2, message naming safetensors)
    the comparison is skipped with a printed reason; once ckpt reads them it is compared.
  * Every other corpus file (picklescan/, modelscan/): inspect and tensors, plain and --json,
    never crash or hang (exit 0, 1 or 2 within 10 s, never a signal, a diagnostic with exit 2),
    and exit 2 follows the one-line error contract. The real torch files among them whose
    pickles name only weights globals (pytorch_model.bin, new_pytorch_model.bin) are compared
    with torch.load(weights_only=True).
"""

import concurrent.futures
import os
import re
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ckpt_testlib as L  # noqa: E402

EXPECTED = os.path.join(L.CORPUS, "expected-torch-1.13.json")


def _load():
    try:
        return L.load_expected(EXPECTED)
    except OSError:
        return {}


EXP = _load()


def _other_files():
    listed = set(EXP)
    out = []
    for d, _, files in os.walk(L.CORPUS):
        for f in sorted(files):
            rel = os.path.relpath(os.path.join(d, f), L.CORPUS)
            if rel in listed or "/" not in rel or rel.endswith(".md"):
                continue
            out.append(rel)
    return sorted(out)


OTHER = _other_files()


def compare_listing(tc, rel, want, doc):
    tc.assertIsInstance(doc.get("tensors"), list, rel + ": no tensors list")
    got = [(g.get("path"), g.get("dtype"), g.get("shape"), g.get("sha256")) for g in doc["tensors"]]
    exp = [(w["path"], w["dtype"], w["shape"], w["sha256"]) for w in want]
    tc.assertEqual([g[0] for g in got], [e[0] for e in exp], rel + ": tensor paths/order")
    for g, e in zip(got, exp):
        tc.assertEqual(g, e, "%s: tensor %s differs (path, dtype, shape, sha256)" %
                       (rel, "/".join(e[0])))


class Expected(unittest.TestCase):
    def test_corpus_present(self):
        self.assertGreater(len(EXP), 50, "expected-torch-1.13.json missing or short")
        self.assertTrue(OTHER, "no picklescan/modelscan files found")


def _make_expected_test(rel, entry):
    def test(self):
        L.require_bin(self)
        path = os.path.join(L.CORPUS, rel)
        if "error" in entry:
            for cmd in (["tensors", "--json", "--sha256"], ["inspect"], ["inspect", "--json"]):
                rc, out, err = L.run_ckpt(cmd + [path])
                L.check_clean_error(self, rc, out, err, path, " ".join(cmd))
            return
        rc, out, err = L.run_ckpt(["tensors", "--json", "--sha256", path])
        if rel.endswith(".safetensors") and rc == 2 and "safetensors" in err.lower():
            L.check_clean_error(self, rc, out, err, path, "tensors")
            msg = "ckpt refuses safetensors for now (%s)" % err.strip()
            print("skip %s: %s" % (rel, msg))
            self.skipTest(msg)
        self.assertEqual(rc, 0, "tensors %s: exit %r: %s" % (rel, rc, err.strip()))
        doc = L.parse_json(self, out, "tensors " + rel)
        compare_listing(self, rel, entry["tensors"], doc)
        if not rel.endswith(".safetensors"):
            with open(path, "rb") as f:
                fmt = "zip" if f.read(4) == b"PK\x03\x04" else "legacy"
            self.assertEqual(doc.get("format"), fmt, rel + ": format")
        for cmd in (["inspect"], ["inspect", "--json"]):
            rc, out, err = L.run_ckpt(cmd + [path])
            self.assertEqual(rc, 0, "%s %s: exit %r: %s" % (" ".join(cmd), rel, rc, err.strip()))
            self.assertTrue(out.strip(), "%s %s: no output" % (" ".join(cmd), rel))
            if "--json" in cmd:
                L.parse_json(self, out, " ".join(cmd) + " " + rel)
    return test


for _rel, _entry in sorted(EXP.items()):
    setattr(Expected, "test_" + re.sub(r"\W", "_", _rel), _make_expected_test(_rel, _entry))


class Others(unittest.TestCase):
    """Files torch was not asked about: hostile pickles, zips, numpy files, a PNG..."""

    CMDS = (["inspect"], ["inspect", "--json"], ["tensors"], ["tensors", "--json", "--sha256"],
            ["scan"], ["scan", "--json"])

    @classmethod
    def setUpClass(cls):
        cls.results = {}
        if not L.CKPT_BIN or not os.path.exists(L.CKPT_BIN):
            return
        jobs = [(rel, tuple(cmd)) for rel in OTHER for cmd in cls.CMDS]
        with concurrent.futures.ThreadPoolExecutor(2) as ex:
            futs = {ex.submit(L.run_ckpt, list(cmd) + [os.path.join(L.CORPUS, rel)],
                              L.DEFAULT_TIMEOUT): (rel, cmd) for rel, cmd in jobs}
            for f in futs:
                cls.results[futs[f]] = f.result()

    def test_no_crash(self):
        L.require_bin(self)
        fails = L.Failures(self, "hostile corpus, no crash")
        for (rel, cmd), (rc, out, err) in sorted(self.results.items()):
            fails.check(L.check_no_crash, self, rc, out, err, "%s %s" % (" ".join(cmd), rel))
        fails.done(show=40)

    def test_error_contract(self):
        """Exit 2 means one line `ckpt: error: FILE: ...` and empty stdout."""
        L.require_bin(self)
        fails = L.Failures(self, "hostile corpus, exit-2 contract")
        for (rel, cmd), (rc, out, err) in sorted(self.results.items()):
            if rc == 2:
                fails.check(L.check_clean_error, self, rc, out, err,
                            os.path.join(L.CORPUS, rel), " ".join(cmd))
        fails.done(show=40)

    def test_json_output_is_json(self):
        L.require_bin(self)
        fails = L.Failures(self, "hostile corpus, JSON output")
        for (rel, cmd), (rc, out, err) in sorted(self.results.items()):
            if rc in (0, 1) and "--json" in cmd:
                fails.check(L.parse_json, self, out, "%s %s" % (" ".join(cmd), rel))
        fails.done(show=40)

    def test_real_torch_files(self):
        """Torch files in the hostile corpus that only name weights globals: compare."""
        import torch
        L.require_bin(self)
        n = 0
        for rel in OTHER:
            path = os.path.join(L.CORPUS, rel)
            with open(path, "rb") as f:
                head = f.read(16)
            globs, npk = L.file_pickle_globals(path)
            is_torch = head[:4] == b"PK\x03\x04" or head.startswith(
                bytes.fromhex("80028a0a6cfc9c46f9206aa850192e"))
            if not is_torch or not npk or not all(L.known_ok_global(g["full"]) for g in globs):
                continue
            try:
                obj = torch.load(path, map_location="cpu", weights_only=True)
            except Exception:
                continue     # not a torch file after all (e.g. an .npz)
            n += 1
            want = [L.tensor_record(t, p) for p, t in L.walk_tensors(obj)]
            with self.subTest(file=rel):
                doc = L.run_json(self, ["tensors", "--json", "--sha256", path])
                compare_listing(self, rel, want, doc)
        self.assertGreaterEqual(n, 2, "expected pytorch_model.bin and new_pytorch_model.bin")


if __name__ == "__main__":
    L.main("test_corpus")
