#!/usr/bin/python3
"""
test_derived_limits.py - issue 9, class 5 (CLI side): what the CLI derives from a file is
bounded by the file, and every limit names the option that raises it.

  * Shared subtrees (the pickle memo makes a DAG): `tensors` and `inspect` expand each
    container once and refer to it afterwards; the references are checked against a walk over
    torch.load's result that tracks object identity. Shared leaves and long paths: the output
    is bounded relative to the file (--max-output), with the exit-2 contract.
  * Broadcast views (stride 0): `extract` and `diff` refuse to expand them past the limit
    (--max-expanded), and write or read nothing before refusing.
  * --labels: a bounded read of a regular file; a directory, /dev/zero or an oversized file
    is an error (exit 2), never a run without labels.
  * `run --resize/--crop` beyond the image limit are refused before anything is allocated.

Every hostile file is made here with torch or pickle. Every ckpt run is bounded: 1 GiB of
address space (RLIMIT_AS; not under a sanitizer, whose shadow memory needs more) and a
generous timeout, so a regression shows as a failure instead of a stuck machine.
"""

import collections
import json
import os
import pickle
import resource
import subprocess
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ckpt_testlib as L  # noqa: E402

TIMEOUT = 120.0
AS_LIMIT = 1 << 30


def sanitized():
    build = os.path.dirname(L.CKPT_BIN)
    try:
        with open(os.path.join(build, "CMakeCache.txt")) as f:
            for line in f:
                if line.startswith("CKPT_SANITIZE:") and line.split("=", 1)[1].strip():
                    return True
    except OSError:
        pass
    return False


SANITIZED = sanitized()


def limit():
    if not SANITIZED:
        resource.setrlimit(resource.RLIMIT_AS, (AS_LIMIT, AS_LIMIT))


def run(args, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL):
    """ckpt ARGS under the address-space limit: (rc, stdout bytes, stderr str)."""
    p = subprocess.run([L.CKPT_BIN] + [str(a) for a in args], stdout=stdout,
                       stderr=subprocess.PIPE, stdin=stdin, preexec_fn=limit, timeout=TIMEOUT,
                       env=L.RUN_ENV)
    return p.returncode, p.stdout if p.stdout is not None else b"", p.stderr.decode("utf-8",
                                                                                    "replace")


def check_error(tc, args, path, *words):
    rc, out, err = run(args)
    L.check_clean_error(tc, rc, out.decode("utf-8", "replace"), err, path,
                        "ckpt " + " ".join(map(str, args)))
    for w in words:
        tc.assertIn(w, err)
    return err


class Tmp(unittest.TestCase):
    def setUp(self):
        L.require_bin(self)
        self.tmp = tempfile.mkdtemp(prefix="ckpt-limits-")

    def tearDown(self):
        import shutil
        shutil.rmtree(self.tmp, ignore_errors=True)

    def path(self, name):
        return os.path.join(self.tmp, name)


# ---- shared subtrees and output size ---------------------------------------------------------

def is_container(x):
    import torch
    return isinstance(x, (dict, list, tuple, set, frozenset)) and not isinstance(x, torch.Size)


def expected_tensor_rows(root):
    """What `tensors --json` must list for torch.load's result: every tensor by path, each
    container walked once (by identity), a container met again as a reference to its first
    path when tensors were found under it."""
    import torch
    rows, first, has = [], {}, {}

    def walk(v, path):
        if isinstance(v, torch.Tensor):
            rows.append({"path": path})
            return True
        if not is_container(v):
            return False
        if id(v) in first:
            if has[id(v)]:
                rows.append({"path": path, "ref": first[id(v)]})
            return has[id(v)]
        first[id(v)] = path
        if isinstance(v, dict):
            items = [(str(k), x) for k, x in v.items()]
        else:
            items = [(str(i), x) for i, x in enumerate(v)]
        found = False
        for k, x in items:
            found = walk(x, path + [k]) or found
        has[id(v)] = found
        return found

    walk(root, [])
    return rows


class Shared(Tmp):
    def dag(self):
        """2^40 paths to one tensor in 2 KB."""
        import torch
        d = {"w": torch.arange(3.0), "name": "x" * 100}
        for i in range(40):
            d = {"a": d, "b": d, "k%d" % i: [1, 2, 3]}
        p = self.path("dag.pt")
        torch.save({"model": d}, p)
        return p

    def test_tensors_refer_to_shared_containers(self):
        import torch
        p = self.dag()
        rc, out, err = run(["tensors", "--json", p])
        self.assertEqual(rc, 0, err)
        self.assertLess(len(out), 64 << 10)
        doc = json.loads(out)
        got = [{k: t[k] for k in ("path", "ref") if k in t} for t in doc["tensors"]]
        self.assertEqual(got, expected_tensor_rows(torch.load(p)))
        rc, out, err = run(["tensors", p])
        self.assertEqual(rc, 0, err)
        lines = out.decode().splitlines()
        self.assertEqual(len(lines), 41)
        self.assertEqual(sum("<same as model/a" in ln for ln in lines), 40)

    def test_tied_weights_and_shared_state_dicts(self):
        import torch
        m = torch.nn.Linear(2, 2)
        sd = m.state_dict()
        p = self.path("tied.pt")
        obj = {"model": sd, "best": sd, "tied": {"a.weight": m.weight, "b.weight": m.weight}}
        torch.save(obj, p)
        rc, out, err = run(["tensors", "--json", p])
        self.assertEqual(rc, 0, err)
        got = [{k: t[k] for k in ("path", "ref") if k in t} for t in json.loads(out)["tensors"]]
        want = expected_tensor_rows(torch.load(p))
        self.assertEqual(got, want)
        # a tied tensor (one object under two keys) is still listed under both
        self.assertIn({"path": ["tied", "b.weight"]}, want)
        self.assertIn({"path": ["best"], "ref": ["model"]}, want)
        rc, out, err = run(["inspect", "--depth", "3", p])
        self.assertEqual(rc, 0, err)
        self.assertRegex(out.decode(), r"\n  best: +<same as model>\n")

    def test_inspect_json_refs_resolve(self):
        import torch
        p = self.dag()
        rc, out, err = run(["inspect", "--json", p])
        self.assertEqual(rc, 0, err)
        self.assertLess(len(out), 256 << 10)
        doc = json.loads(out)

        def at(node, path):
            for comp in path:
                node = next(it["value"] for it in node["items"] if it["key"] == comp)
            return node

        refs = []

        def find(node, path):
            if "ref" in node:
                refs.append((path, node["ref"]))
                return
            for it in node.get("items", []):
                if isinstance(it, dict) and "key" in it:
                    find(it["value"], path + [it["key"]])

        find(doc["root"], [])
        self.assertEqual(len(refs), 40)
        obj = torch.load(p)

        def py_at(path):
            x = obj
            for comp in path:
                x = x[comp]
            return x

        for path, ref in refs:
            self.assertEqual(at(doc["root"], ref)["type"], "dict")
            self.assertIs(py_at(path), py_at(ref), (path, ref))

    def test_shared_leaf_output_limit(self):
        # a 100 KB string referenced 700 times: 70 MB of JSON from a 100 KB file
        p = self.path("leaf.pkl")
        s = "x" * 100000
        with open(p, "wb") as f:
            pickle.dump({"a": [s] * 700}, f, protocol=2)
        self.assertLess(os.path.getsize(p), 110000)
        check_error(self, ["inspect", "--json", p], p, "--max-output")
        rc, out, err = run(["inspect", "--json", "--max-output", "100M", p])
        self.assertEqual(rc, 0, err)
        doc = json.loads(out)
        items = doc["root"]["items"][0]["value"]["items"]
        self.assertEqual(len(items), 700)
        self.assertEqual(items[699], {"type": "str", "value": s})
        check_error(self, ["inspect", "--json", "--max-output", "1M", p], p,
                    "--max-output limit of 1.0 MB")

    def test_long_paths_output_limit(self):
        # a chain of 400 dicts with 2000-character keys, a tensor at each level: 160 MB of
        # paths from a 1 MB file
        import torch
        sys.setrecursionlimit(10000)
        t = torch.zeros(1)
        d = {"w": t}
        for i in range(400):
            d = {("%03d" % i) * 667: d, "w": t}
        p = self.path("deep.pt")
        torch.save(d, p)
        self.assertLess(os.path.getsize(p), 2 << 20)
        for args in (["tensors"], ["tensors", "--json"], ["tensors", "--sha256"]):
            check_error(self, args + [p], p, "--max-output")
        rc, out, err = run(["inspect", "--depth", "2", p])
        self.assertEqual(rc, 0, err)

    def test_bad_max_output(self):
        p = self.dag()
        rc, out, err = run(["tensors", "--max-output", "lots", p])
        self.assertEqual((rc, out), (2, b""))
        self.assertIn("--max-output wants a byte count", err)


# ---- broadcast views ----------------------------------------------------------------------------

class Broadcast(Tmp):
    def save(self, name, obj):
        import torch
        p = self.path(name)
        torch.save(obj, p)
        return p

    def assert_nothing_written(self, out):
        left = [f for f in os.listdir(os.path.dirname(out))
                if f.startswith(os.path.basename(out)) or f.startswith(".")]
        self.assertEqual(left, [], "files left next to %s" % out)

    def test_extract_refuses_expansion(self):
        import torch
        one = self.save("bc.pt", {"w": torch.ones(1).expand(1 << 30)})  # 4 GiB from ~700 B
        # 64 tensors of 1 GiB each, every one below the limit alone
        many = self.save("many.pt", {"w%d" % i: torch.ones(1).expand(1 << 28) for i in range(64)})
        self.assertLess(os.path.getsize(many), 32 << 10)
        for src in (one, many):
            for fmt in ("pth", "safetensors"):
                out = self.path("out." + fmt)
                check_error(self, ["extract", src, "-o", out, "--no-check"], src,
                            "--max-expanded", "nothing written")
                self.assert_nothing_written(out)

    def test_extract_within_limit_and_option(self):
        import torch
        src = self.save("small.pt", {"w": torch.arange(4.0).expand(1 << 17, 4)})
        out = self.path("small.pth")
        check_error(self, ["extract", src, "-o", out, "--no-check", "--max-expanded", "1M"], src,
                    "--max-expanded limit of 1.0 MB")
        self.assert_nothing_written(out)
        rc, so, se = run(["extract", src, "-o", out, "--no-check", "--max-expanded", "4M"])
        self.assertEqual(rc, 0, se)
        got = torch.load(out, weights_only=True)["w"]
        self.assertTrue(torch.equal(got, torch.arange(4.0).expand(1 << 17, 4)))
        rc, so, se = run(["extract", src, "-o", self.path("d.pth"), "--no-check"])
        self.assertEqual(rc, 0, se)
        rc, so, se = run(["extract", src, "-o", out, "--max-expanded", "2x"])
        self.assertEqual((rc, so), (2, b""))
        self.assertIn("--max-expanded wants a byte count", se)

    def test_diff_refuses_expansion(self):
        import torch
        a = self.save("a.pt", {"w": torch.ones(1).expand(1 << 28)})  # 1 GiB each side
        self.assertLess(os.path.getsize(a), 1000)
        check_error(self, ["diff", a, a], a, "--max-expanded")
        check_error(self, ["diff", a, a, "--json"], a, "--max-expanded")
        b = self.save("b.pt", {"w": torch.ones(1).expand(1 << 16)})
        c = self.save("c.pt", {"w": torch.ones(1 << 16)})
        rc, so, se = run(["diff", b, c, "--json"])
        self.assertEqual(rc, 0, se)
        self.assertTrue(json.loads(so)["match"])
        check_error(self, ["diff", b, c, "--max-expanded", "300K"], b, "--max-expanded limit")


class HashBudget(Tmp):
    def test_sha256_total_bounded(self):
        # 40 broadcast views of 256 MiB each: 10 GiB to hash from 10 KB
        import torch
        p = self.path("many.pt")
        torch.save({"w%d" % i: torch.ones(1).expand(1 << 26) for i in range(40)}, p)
        self.assertLess(os.path.getsize(p), 16 << 10)
        check_error(self, ["tensors", "--sha256", p], p, "--max-expanded")
        check_error(self, ["tensors", "--sha256", "--json", "--max-expanded", "100M", p], p,
                    "--max-expanded limit of 104.9 MB")
        # without --sha256 nothing is hashed: the listing is immediate
        rc, out, err = run(["tensors", p])
        self.assertEqual(rc, 0, err)
        self.assertEqual(len(out.decode().splitlines()), 40)


# ---- extract's outputs: special files and a stdout that cannot be written --------------------

class ExtractOutputs(Tmp):
    def src(self):
        import torch
        p = self.path("src.pt")
        torch.save({"w": torch.arange(6.0).reshape(2, 3)}, p)
        return p

    def test_never_replaces_special_files(self):
        src = self.src()
        fifo = self.path("fifo")
        os.mkfifo(fifo)
        link = self.path("link.pth")
        os.symlink("/dev/null", link)
        for out in ("/dev/null", fifo, link):
            before = os.lstat(out)
            check_error(self, ["extract", src, "-o", out, "--format", "pth", "--no-check",
                               "--force"], out, "not a regular file", "nothing written")
            after = os.lstat(out)
            self.assertEqual((before.st_mode, before.st_ino, before.st_rdev),
                             (after.st_mode, after.st_ino, after.st_rdev))
        self.assertEqual(sorted(os.listdir(self.tmp)), ["fifo", "link.pth", "src.pt"])
        # a regular file is still replaced with --force
        out = self.path("old.pth")
        with open(out, "w") as f:
            f.write("old")
        rc, so, se = run(["extract", src, "-o", out, "--no-check", "--force"])
        self.assertEqual(rc, 0, se)

    def test_empty_tensor_with_huge_dims(self):
        # numel 0, but the product of the other dims passes int64: torch's strides wrap
        import torch
        t = torch.empty(0, 1 << 40, 1 << 40)
        src = self.path("empty.pt")
        torch.save({"e": t, "w": torch.ones(2)}, src)
        for fmt in ("pth", "safetensors"):
            out = self.path("empty." + fmt)
            rc, so, se = run(["extract", src, "-o", out, "--no-check"])
            self.assertEqual(rc, 0, se)
            self.assertEqual(se, "")
            if fmt == "pth":
                got = torch.load(out, weights_only=True)["e"]
                self.assertEqual((got.shape, got.stride()), (t.shape, t.stride()))

    def test_stdout_full(self):
        import torch
        src = self.src()
        for args in ([], ["--json"]):
            out = self.path("full%d.pth" % len(args))
            with open("/dev/full", "w") as full:
                rc, so, se = run(["extract", src, "-o", out, "--no-check"] + args, stdout=full)
            self.assertEqual(rc, 2, se)
            lines = se.splitlines()
            self.assertEqual(len(lines), 1, se)
            self.assertTrue(lines[0].startswith("ckpt: error: %s: written, but" % out), se)
            self.assertIn("No space left on device", se)
            # the file is complete
            self.assertTrue(torch.equal(torch.load(out, weights_only=True)["w"],
                                        torch.arange(6.0).reshape(2, 3)))


# ---- run: labels and image sizes ------------------------------------------------------------

class RunLimits(Tmp):
    @classmethod
    def setUpClass(cls):
        import numpy as np
        import torch
        import torchvision
        from PIL import Image
        L.require_bin()
        cls.dir = tempfile.mkdtemp(prefix="ckpt-run-limits-")
        torch.manual_seed(0)
        cls.model = os.path.join(cls.dir, "r18.pth")
        torch.save(torchvision.models.resnet18(num_classes=3).state_dict(), cls.model)
        cls.image = os.path.join(cls.dir, "img.png")
        rng = np.random.default_rng(1)
        Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(cls.image)
        cls.labels = os.path.join(cls.dir, "labels.txt")
        with open(cls.labels, "w") as f:
            f.write("zero\r\none\ntwo")

    @classmethod
    def tearDownClass(cls):
        import shutil
        shutil.rmtree(cls.dir, ignore_errors=True)

    def run_json(self, *args):
        rc, out, err = run(["run", "--json", self.model, self.image] + list(args))
        self.assertEqual(rc, 0, err)
        return json.loads(out)

    def test_labels_read(self):
        doc = self.run_json("--labels", self.labels, "--topk", "3")
        got = {t["index"]: t["label"] for t in doc["results"][0]["topk"]}
        self.assertEqual(got, {0: "zero", 1: "one", 2: "two"})

    def test_labels_refused(self):
        big = self.path("big.txt")
        with open(big, "wb") as f:
            f.truncate(3 << 30)  # sparse: 3 GB that cost no disk
        for bad, words in ((big, ["larger than 64 MB"]), (self.tmp, ["is a directory"]),
                           ("/dev/zero", ["not a regular file"]),
                           (self.path("none.txt"), ["cannot"])):
            check_error(self, ["run", self.model, self.image, "--labels", bad], bad, *words)

    def test_sizes_refused_before_allocating(self):
        for args, words in ((["--crop", "12000"], ["--crop 12000", "--max-side"]),
                            (["--resize", "12000", "--crop", "12000"], ["--max-side"]),
                            (["--resize", "12000"], ["--resize 12000", "--max-side"]),
                            (["--crop", "2000", "--max-side", "1500"], ["--max-side"])):
            rc, out, err = run(["run", self.model, self.image] + args)
            self.assertEqual((rc, out), (2, b""), err)
            for w in words:
                self.assertIn(w, err)
        # raised: a larger crop than the default limit runs (and pads the small image)
        doc = self.run_json("--resize", "0", "--crop", "1100", "--max-side", "1100")
        self.assertEqual(doc["model"]["crop"], 1100)

    def test_input_npy_size_refused(self):
        import numpy as np
        x = self.path("x.npy")
        np.save(x, np.zeros((1, 3, 1, 1100), dtype=np.float32))
        rc, out, err = run(["run", self.model, "--input", x])
        self.assertEqual((rc, out), (2, b""), err)
        self.assertIn("--max-side", err)

    def test_option_ranges_named(self):
        for opt, value, words in (("--topk", "99999999999", "from 1 to"),
                                  ("--batch", "5000", "from 1 to 1024"),
                                  ("--repeat", "0", "from 1 to"),
                                  ("--threads", "100000", "from 1 to 1024")):
            rc, out, err = run(["run", self.model, self.image, opt, value])
            self.assertEqual((rc, out), (2, b""), err)
            self.assertIn(opt + " takes", err)
            self.assertIn(words, err)
            self.assertNotIn("at least 1", err)


if __name__ == "__main__":
    unittest.main()
