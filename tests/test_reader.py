#!/usr/bin/python3
"""
test_reader.py - ckpt reads what torch reads: the generated fixtures and tests/data/vectors.

For every fixture of gen_fixtures.py (both formats, protocol 2 and 4, DEFLATE, odd root names):
  * `ckpt tensors --json --sha256 FILE` lists the tensors torch.load returns, in walk order, with
    the same path, dtype, shape, stride, storage_offset, nbytes and SHA-256; tensors that share a
    storage in torch share ckpt's "storage" key and no others do; "format" is zip/legacy.
  * `ckpt inspect --json FILE` has the same tree: container types, keys in order, int/float/str/
    bool/None values, numpy scalars by value, Namespace as an object of class argparse.Namespace.
  * `ckpt inspect FILE` (human) of the training checkpoints reads at a glance (issue 2).
For tests/data/vectors/*.pt the expectation is computed here with torch.load.
tar_legacy.pt is either refused cleanly (exit 2, one line) or read exactly as torch reads it.
Also: --help for every command, and clean errors for a missing file and a bad command line.
"""

import glob
import json
import math
import os
import re
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ckpt_testlib as L  # noqa: E402

BIG = 10 * 1024 * 1024      # files above this get a longer time limit (sanitizer builds)


def _timeout(path):
    return 120 if os.path.getsize(path) > BIG else L.DEFAULT_TIMEOUT


# ---- comparing `tensors --json` with torch ------------------------------------------------

def compare_tensors(tc, path, exp, doc, check_strides=True):
    """exp: expected json (tensors, shared, format); doc: ckpt's tensors --json document."""
    name = os.path.basename(path)
    tc.assertIsInstance(doc, dict, name)
    if "format" in exp:
        tc.assertEqual(doc.get("format"), exp["format"], "%s: format" % name)
    tc.assertEqual(doc.get("file"), str(path), "%s: \"file\" is not the path given" % name)
    got = doc.get("tensors")
    tc.assertIsInstance(got, list, "%s: no \"tensors\" list" % name)
    want = exp["tensors"]
    tc.assertEqual([g.get("path") for g in got], [w["path"] for w in want],
                   "%s: tensor paths differ" % name)
    for w, g in zip(want, got):
        where = "%s %s" % (name, "/".join(w["path"]))
        tc.assertEqual(g.get("dtype"), w["dtype"], where + ": dtype")
        tc.assertEqual(g.get("shape"), w["shape"], where + ": shape")
        if check_strides:
            tc.assertEqual(g.get("stride"), w["stride"], where + ": stride")
            tc.assertEqual(g.get("storage_offset"), w["storage_offset"], where + ": storage_offset")
        numel = 1
        for s in w["shape"]:
            numel *= s
        if "elsize" in w:
            tc.assertEqual(g.get("nbytes"), numel * w["elsize"], where + ": nbytes")
        tc.assertEqual(g.get("sha256"), w["sha256"], where + ": sha256")
        tc.assertIsInstance(g.get("storage"), str, where + ": storage key is not a string")
        if "requires_grad" in g and "requires_grad" in w:
            tc.assertEqual(g["requires_grad"], w["requires_grad"], where + ": requires_grad")
        if "parameter" in g and "is_parameter" in w:
            tc.assertEqual(g["parameter"], w["is_parameter"], where + ": parameter")
    # Storage identity: same torch storage <=> same ckpt key (non-empty storages only).
    if "shared" in exp and "storage_nonempty" in exp:
        gid = {}
        for k, grp in enumerate(exp["shared"]):
            for i in grp:
                gid[i] = ("g", k)
        t2c, c2t = {}, {}
        for i, g in enumerate(got):
            if not exp["storage_nonempty"][i]:
                continue
            tg = gid.get(i, ("t", i))
            key = g.get("storage")
            if tg in t2c:
                tc.assertEqual(key, t2c[tg], "%s: tensors %s and %s share a storage in torch but "
                               "have storage keys %r and %r" % (
                                   name, want[i]["path"], want[tg[1] if tg[0] == "t" else
                                                           exp["shared"][tg[1]][0]]["path"],
                                   key, t2c[tg]))
            t2c[tg] = key
            if key in c2t:
                tc.assertEqual(c2t[key], tg, "%s: tensor %s has storage key %r, which another "
                               "tensor with a different torch storage also has" % (
                                   name, want[i]["path"], key))
            c2t[key] = tg


def enrich_expected(exp):
    """Element sizes and storage emptiness, derived from dtype and torch's storage groups."""
    sizes = {"float32": 4, "float64": 8, "float16": 2, "bfloat16": 2, "int8": 1, "int16": 2,
             "int32": 4, "int64": 8, "uint8": 1, "bool": 1, "complex64": 8, "complex128": 16}
    for w in exp["tensors"]:
        if w["dtype"] in sizes:
            w["elsize"] = sizes[w["dtype"]]
    return exp


def expected_from_torch(path):
    import torch
    obj = torch.load(path, map_location="cpu")
    pairs = L.walk_tensors(obj)
    exp = {"tensors": [L.tensor_record(t, p) for p, t in pairs],
           "shared": L.storage_groups(pairs),
           "storage_nonempty": [L.storage_id(t)[1] > 0 for _, t in pairs],
           "root": L.describe(obj)}
    with open(path, "rb") as f:
        exp["format"] = "zip" if f.read(4) == b"PK\x03\x04" else "legacy"
    return enrich_expected(exp)


# ---- comparing `inspect --json` with torch -----------------------------------------------

def _items(node):
    """Children of a ckpt container node, as a list, whatever spelling the schema uses."""
    for k in ("items", "value", "values", "entries", "elements", "children"):
        if k in node:
            return node[k]
    return None


def _dict_pairs(node):
    """[(key_string, child_node, key_node_or_None)] of a ckpt dict node. docs/CLI.md: string
    keys as "key", other keys as a node in "key_node"."""
    it = _items(node)
    pairs = []
    if isinstance(it, dict):
        return [(k, v, None) for k, v in it.items()]
    if not isinstance(it, list):
        return None
    for e in it:
        kn = None
        if isinstance(e, list) and len(e) == 2:
            k, v = e
        elif isinstance(e, dict) and "key" in e:
            k, v = e["key"], e.get("value")
        elif isinstance(e, dict) and "key_node" in e:
            kn, v = e["key_node"], e.get("value")
            k = kn.get("value") if isinstance(kn, dict) else kn
        else:
            return None
        if isinstance(k, dict):          # key given as a node
            kn, k = k, k.get("value")
        if isinstance(k, bool):
            k = "True" if k else "False"
        pairs.append((str(k), v, kn))
    return pairs


def _class_of(node):
    for k in ("class", "class_name", "callable", "name"):
        if isinstance(node.get(k), str):
            return node[k]
    return None


def compare_node(tc, exp, got, where):
    tc.assertIsInstance(got, dict, "%s: not a JSON object: %r" % (where, got))
    t = exp["type"]
    gt = got.get("type")
    tc.assertEqual(gt, t, "%s: type %r, torch has %r (%s)" % (where, gt, t, exp.get("class", "")))
    if exp.get("class") == "numpy.ndarray" and _class_of(got) != "numpy.ndarray":
        # Accepted raw form: the _reconstruct(numpy.ndarray, ...) call it pickles as.
        tc.assertRegex(_class_of(got) or "", r"^numpy\.(_)?core\.multiarray\._reconstruct$",
                       where + ": class of an ndarray")
        args = (got.get("args") or {}).get("items") or [{}]
        tc.assertEqual((args[0].get("module"), args[0].get("name")), ("numpy", "ndarray"),
                       where + ": ndarray reconstruct args")
    elif exp.get("class") == "builtins.frozenset":
        if "frozen" in got:
            tc.assertIs(got["frozen"], True, where + ": frozenset not marked frozen")
    elif exp.get("class") and t != "global":
        tc.assertEqual(_class_of(got), exp["class"], where + ": class")
    if t == "dict":
        pairs = _dict_pairs(got)
        tc.assertIsNotNone(pairs, "%s: dict node without recognisable items: %s" %
                           (where, json.dumps(got)[:300]))
        tc.assertEqual([k for k, _, _ in pairs], [k for k, _, _ in exp["items"]], where + ": keys")
        for (k, ktype, e), (_, g, kn) in zip(exp["items"], pairs):
            if ktype != "str":   # the key's own type must survive (0 is not "0")
                tc.assertIsInstance(kn, dict, "%s: key %r (a Python %s) is not given as a node"
                                    % (where, k, ktype))
                tc.assertEqual(kn.get("type"), {"int": "int", "float": "float", "bool": "bool",
                                                "bytes": "bytes", "tuple": "tuple"}.get(ktype,
                                                                                       ktype),
                               "%s: type of key %r" % (where, k))
            elif kn is not None:
                tc.assertEqual(kn.get("type"), "str", "%s: key %r" % (where, k))
            compare_node(tc, e, g, where + "/" + k)
    elif t in ("list", "tuple"):
        it = _items(got)
        tc.assertIsInstance(it, list, "%s: %s node without items" % (where, t))
        tc.assertEqual(len(it), len(exp["items"]), where + ": length")
        for i, (e, g) in enumerate(zip(exp["items"], it)):
            compare_node(tc, e, g, "%s/%d" % (where, i))
    elif t == "set":
        it = _items(got)
        tc.assertIsInstance(it, list, where + ": set without items")
        tc.assertEqual(len(it), len(exp["items"]), where + ": set size")
        if exp.get("class") != "builtins.frozenset" and "frozen" in got:
            tc.assertIs(got["frozen"], False, where + ": set marked frozen")
    elif t == "int":
        v = got.get("value")
        tc.assertIsNotNone(v, where + ": int without value")
        tc.assertEqual(int(v), exp["value"], where + ": int value")
    elif t == "float":
        v = got.get("value")
        tc.assertIsNotNone(v, where + ": float without value")
        ev = exp["value"]
        if isinstance(ev, str):
            tc.assertEqual(str(v).lower().lstrip("+"), ev.lower(), where + ": float value")
        else:
            tc.assertEqual(float(v), ev, where + ": float value (JSON must round-trip)")
            if ev == 0.0:
                tc.assertEqual(math.copysign(1, float(v)), math.copysign(1, ev),
                               where + ": sign of zero")
    elif t in ("str", "bool"):
        tc.assertEqual(got.get("value"), exp["value"], where + ": value")
    elif t == "complex":
        v = got.get("value")
        if isinstance(v, list):
            tc.assertEqual([float(x) for x in v], exp["value"], where + ": complex value")
        elif isinstance(v, dict):
            tc.assertEqual([float(v.get("re", v.get("real"))), float(v.get("im", v.get("imag")))],
                           exp["value"], where + ": complex value")
    elif t == "bytes":
        for k in ("hex",):
            if k in got:
                tc.assertEqual(got[k], exp["hex"], where + ": bytes")
        if "len" in got:
            tc.assertEqual(got["len"], len(exp["hex"]) // 2, where + ": bytes length")
    elif t == "global":
        name = got.get("name", "")
        if got.get("module") and not str(name).startswith(got["module"] + "."):
            name = got["module"] + "." + str(name)
        tc.assertEqual(name, exp["name"], where + ": global name")
    elif t == "tensor":
        tc.assertEqual(got.get("dtype"), exp["dtype"], where + ": dtype")
        tc.assertEqual(got.get("shape"), exp["shape"], where + ": shape")
    elif t == "object" and "state" in exp:
        st = got.get("state")
        tc.assertIsInstance(st, dict, "%s: object without state: %s" % (where,
                                                                       json.dumps(got)[:300]))
        compare_node(tc, exp["state"], st, where + "/state")


# ---- the tests ------------------------------------------------------------------------------

def load_manifest():
    path = os.path.join(L.CKPT_FIXTURES or "", "manifest.json")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return json.load(f)


MANIFEST = load_manifest()


class Fixtures(unittest.TestCase):
    """Methods are added per fixture file below."""

    def test_manifest_present(self):
        self.assertTrue(MANIFEST, "no fixtures in %r: run tests/gen_fixtures.py" % L.CKPT_FIXTURES)
        formats = {(m["format"], m["protocol"]) for m in MANIFEST}
        self.assertEqual(formats, {("zip", 2), ("legacy", 2), ("zip", 4), ("legacy", 4)})


def _fixture_expected(m):
    exp = L.load_expected(os.path.join(L.CKPT_FIXTURES, m["expected"]))
    exp["storage_nonempty"] = [t["storage_nbytes"] > 0 for t in exp["tensors"]]
    return enrich_expected(exp)


def _make_tensor_test(m):
    def test(self):
        L.require_bin(self)
        path = os.path.join(L.CKPT_FIXTURES, m["file"])
        exp = _fixture_expected(m)
        doc = L.run_json(self, ["tensors", "--json", "--sha256", path], timeout=_timeout(path))
        compare_tensors(self, path, exp, doc)
    return test


def _make_inspect_test(m):
    def test(self):
        L.require_bin(self)
        path = os.path.join(L.CKPT_FIXTURES, m["file"])
        exp = _fixture_expected(m)
        doc = L.run_json(self, ["inspect", "--json", path], timeout=_timeout(path))
        self.assertEqual(doc.get("format"), exp["format"], "format")
        self.assertEqual(doc.get("file"), path, "file")
        self.assertIn("root", doc)
        compare_node(self, exp["root"], doc["root"], m["file"] + ":root")
    return test


for _m in MANIFEST:
    _id = re.sub(r"\W", "_", _m["file"])
    setattr(Fixtures, "test_tensors_" + _id, _make_tensor_test(_m))
    setattr(Fixtures, "test_inspect_json_" + _id, _make_inspect_test(_m))


class HumanInspect(unittest.TestCase):
    """Issue 2: the training checkpoint must read at a glance."""

    def _check(self, fname):
        L.require_bin(self)
        path = os.path.join(L.CKPT_FIXTURES, fname)
        exp = L.load_expected(os.path.splitext(path)[0] + ".expected.json")
        n_model = sum(1 for t in exp["tensors"] if t["path"][0] == "model")
        rc, out, err = L.run_ckpt(["inspect", path], timeout=_timeout(path))
        self.assertEqual(rc, 0, "inspect %s: exit %r: %s" % (fname, rc, err))
        for needle in ("epoch", "299", "max_accuracy", "0.9327", "argparse.Namespace",
                       "optimizer", "lr_scheduler", "best_acc1"):
            self.assertIn(needle, out, "inspect %s: %r missing from:\n%s" % (fname, needle, out))
        # `model` is summarised on one line with its tensor count.
        lines = [ln for ln in out.splitlines() if re.search(r"\bmodel\b", ln)]
        self.assertTrue(any(re.search(r"\b%d\b" % n_model, ln) for ln in lines),
                        "inspect %s: no line with 'model' and its %d tensors:\n%s" % (
                            fname, n_model, out))
        self.assertNotRegex(out, r"layer1\.0\.conv1\.weight|\b0\.weight\b",
                            "inspect %s: the model's tensors are listed one by one at the "
                            "default depth instead of a one-line summary" % fname)
        self.assertNotIn("error", err.lower(), "inspect %s: stderr: %s" % (fname, err))

    def test_resnet_zip(self):
        self._check("training_resnet_zip.pt")

    def test_resnet_legacy(self):
        self._check("training_resnet_legacy.pt")

    def test_adam_zip_p4(self):
        self._check("training_adam_zip_p4.pt")

    def test_adam_legacy(self):
        self._check("training_adam_legacy.pt")


class Vectors(unittest.TestCase):
    """tests/data/vectors, compared with torch.load of the same file."""

    def test_vectors(self):
        L.require_bin(self)
        files = sorted(glob.glob(os.path.join(L.VECTORS, "*.pt")))
        self.assertTrue(files, "no vectors in " + L.VECTORS)
        for path in files:
            if os.path.basename(path) == "tar_legacy.pt":
                continue
            with self.subTest(file=os.path.basename(path)):
                exp = expected_from_torch(path)
                doc = L.run_json(self, ["tensors", "--json", "--sha256", path])
                compare_tensors(self, path, exp, doc)
                doc = L.run_json(self, ["inspect", "--json", path])
                self.assertEqual(doc.get("format"), exp["format"])
                compare_node(self, exp["root"], doc.get("root"), os.path.basename(path) + ":root")

    def test_tar_legacy(self):
        """Issue 2: refuse the 0.1.x tar format with a precise message, unless it is read; if
        it is read, it must give what torch gives."""
        L.require_bin(self)
        path = os.path.join(L.VECTORS, "tar_legacy.pt")
        for cmd in (["tensors", "--json", "--sha256"], ["inspect"], ["inspect", "--json"]):
            with self.subTest(cmd=cmd):
                rc, out, err = L.run_ckpt(cmd + [path])
                if rc == 0 and cmd[0] == "tensors":
                    print("note: tar_legacy.pt is read (not refused); comparing with torch")
                    compare_tensors(self, path, dict(expected_from_torch(path), format="tar"),
                                    json.loads(out), check_strides=True)
                elif rc != 0 or cmd[0] == "tensors":
                    L.check_clean_error(self, rc, out, err, path, " ".join(cmd))
                    self.assertIn("tar", err.lower(), "the message should say it is a tar file")


class CommandLine(unittest.TestCase):
    def test_help(self):
        L.require_bin(self)
        for args in (["--help"], ["help"], ["inspect", "--help"], ["tensors", "--help"],
                     ["scan", "--help"]):
            with self.subTest(args=args):
                rc, out, err = L.run_ckpt(args)
                self.assertEqual(rc, 0, "ckpt %s: exit %r; stderr %s" % (" ".join(args), rc, err))
                self.assertIn("usage", (out + err).lower(), "ckpt %s prints no usage" % args)
        rc, out, _ = L.run_ckpt(["--help"])
        for cmd in ("inspect", "tensors", "scan"):
            self.assertIn(cmd, out, "ckpt --help does not list %r" % cmd)

    def test_missing_file(self):
        L.require_bin(self)
        path = "/nonexistent/dir/model.pt"
        for cmd in ("inspect", "tensors", "scan"):
            with self.subTest(cmd=cmd):
                rc, out, err = L.run_ckpt([cmd, path])
                L.check_clean_error(self, rc, out, err, path, cmd)

    def test_bad_command_line(self):
        L.require_bin(self)
        for args in (["no-such-command"], ["inspect"], ["tensors", "--no-such-flag",
                                                        os.path.join(L.VECTORS, "two.pt")]):
            with self.subTest(args=args):
                rc, out, err = L.run_ckpt(args)
                self.assertEqual(rc, 2, "ckpt %s: exit %r" % (" ".join(args), rc))
                self.assertEqual(out, "", "ckpt %s: stdout on a usage error" % args)
                self.assertTrue(err.strip(), "ckpt %s: no diagnostic" % args)
                self.assertTrue(err.startswith("ckpt: error: ") or "usage" in err.lower(), err)

    def test_tensors_human(self):
        """`ckpt tensors FILE`: one line per tensor, naming it (torch gives the list)."""
        L.require_bin(self)
        path = os.path.join(L.VECTORS, "two.pt")
        rc, out, err = L.run_ckpt(["tensors", path])
        self.assertEqual(rc, 0, err)
        lines = [ln for ln in out.splitlines() if ln.strip()]
        for name in ("weight", "bias"):
            self.assertTrue(any(name in ln for ln in lines), "%r not listed:\n%s" % (name, out))
        self.assertLessEqual(len([ln for ln in lines if "float32" in ln]), 2 + 1, out)


if __name__ == "__main__":
    L.main("test_reader")
