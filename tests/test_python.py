#!/usr/bin/env python3
"""The Python module (python/ckpt) against PyTorch: every array of every conformance fixture
and of torchvision state dicts (zip and legacy, wrapped by DataParallel, inside a training
checkpoint) equals torch's tensor bit for bit; the tree is the one `ckpt inspect --json` shows;
check() and scan() give the documents of `ckpt check --json` and `ckpt scan --json`; a file
whose pickle calls os.system runs nothing; the module imports and reads without torch, from the
build tree (CKPT_LIBRARY) and from a `cmake --install` prefix.

unittest test cases (pytest collects them too). In a sanitizer build the test re-runs itself
with the sanitizer runtimes preloaded, since python3 itself is not built with them."""
import json
import math
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


def sanitizers():
    try:
        with open(os.path.join(BUILD, "CMakeCache.txt")) as f:
            for line in f:
                if line.startswith("CKPT_SANITIZE:"):
                    return [s for s in line.split("=", 1)[1].strip().split(",") if s]
    except OSError:
        pass
    return []


def _preload():
    """Re-exec under the sanitizer runtimes libckpt.so was linked with (once)."""
    san = sanitizers()
    if not san or os.environ.get("CKPT_TEST_PRELOADED"):
        return
    libs = []
    for s in san:
        out = subprocess.run(["gcc", "-print-file-name=lib%s.so" % {"address": "asan",
                              "undefined": "ubsan"}.get(s, s)],
                             capture_output=True, text=True).stdout.strip()
        libs.append(out)
    env = dict(os.environ, CKPT_TEST_PRELOADED="1", LD_PRELOAD=":".join(libs),
               ASAN_OPTIONS="detect_leaks=0:" + os.environ.get("ASAN_OPTIONS", ""))
    os.execve(sys.executable, [sys.executable] + sys.argv, env)


sys.path.insert(0, PYDIR)


def torch_bytes(t):
    """t's elements as ckpt.numpy() gives them: bfloat16 widened to float32."""
    import torch
    if t.dtype == torch.bfloat16:
        t = t.float()
    return lib.tensor_bytes(t)


def key_str(k):
    return lib._key_str(k)


class Fixtures(unittest.TestCase):
    """Every tensor of every conformance fixture, read with ckpt.open, equals torch.load's."""

    def test_every_array_equals_torch(self):
        import ckpt
        import torch
        with open(os.path.join(lib.CKPT_FIXTURES, "manifest.json")) as f:
            manifest = json.load(f)
        n = 0
        for m in manifest:
            path = os.path.join(lib.CKPT_FIXTURES, m["file"])
            with self.subTest(file=m["file"]):
                ref = lib.walk_tensors(torch.load(path, map_location="cpu"))
                with ckpt.open(path) as f:
                    got = [([key_str(k) for k in p], t) for p, t in f.tensors()]
                    self.assertEqual([p for p, _ in got], [p for p, _ in ref])
                    for (p, t), (_, r) in zip(got, ref):
                        self.assertEqual(t.dtype, lib.dtype_name(r.dtype), p)
                        self.assertEqual(t.shape, tuple(r.shape), p)
                        self.assertEqual(t.stride, tuple(r.stride()), p)
                        self.assertEqual(t.storage_offset, r.storage_offset(), p)
                        self.assertEqual(t.requires_grad, r.requires_grad, p)
                        if r.is_quantized:
                            with self.assertRaises(ckpt.Error):
                                t.numpy()
                            continue
                        a = t.numpy()
                        self.assertEqual(a.shape, tuple(r.shape), p)
                        self.assertEqual(a.tobytes(), torch_bytes(r), p)
                        n += 1
        self.assertGreater(n, 100)


def inspect_node(v, seen_dicts=None):
    """ckpt's Python tree as the nodes of `ckpt inspect --json` (docs/CLI.md), to compare."""
    import ckpt
    if v is None:
        return {"type": "none"}
    if isinstance(v, bool):
        return {"type": "bool", "value": v}
    if isinstance(v, int):
        if -2**63 <= v < 2**63:
            return {"type": "int", "value": v}
        return {"type": "int", "value": str(v)}
    if isinstance(v, float):
        return {"type": "float", "value": fnum(v)}
    if isinstance(v, complex):
        return {"type": "complex", "real": fnum(v.real), "imag": fnum(v.imag)}
    if isinstance(v, str):
        return {"type": "str", "value": v.encode("utf-8", "replace").decode("utf-8")}
    if isinstance(v, bytes):
        return {"type": "bytes", "len": len(v), "hex": v[:64].hex()}
    if isinstance(v, (tuple, list)):
        return {"type": "tuple" if isinstance(v, tuple) else "list",
                "items": [inspect_node(x) for x in v]}
    if isinstance(v, (set, frozenset)):
        return {"type": "set", "frozen": isinstance(v, frozenset),
                "items": sorted((inspect_node(x) for x in v), key=json.dumps)}
    if isinstance(v, ckpt.Dict):
        items = []
        for k, x in v.items():
            if isinstance(k, str):
                items.append({"key": k, "value": inspect_node(x)})
            else:
                items.append({"key_node": inspect_node(k), "value": inspect_node(x)})
        o = {"type": "dict", "items": items}
        if v.class_name:
            o["class"] = v.class_name
        if v.attrs is not None:
            o["attrs"] = inspect_node(v.attrs)
        return o
    if isinstance(v, ckpt.Global):
        return {"type": "global", "module": v.module, "name": v.name}
    if isinstance(v, ckpt.Object):
        o = {"type": "object", "class": v.name, "newobj": v.newobj}
        if v.name is None:
            o["callable"] = inspect_node(v.callable)
        for k in ("args", "state", "items", "list"):
            x = getattr(v, k)
            o[k] = None if x is None else inspect_node(x)
        return o
    if isinstance(v, ckpt.Tensor):
        return {"type": "tensor", "dtype": v.dtype, "shape": list(v.shape),
                "stride": list(v.stride), "storage_offset": v.storage_offset,
                "storage": v.storage, "nbytes": v.nbytes, "requires_grad": v.requires_grad,
                "parameter": v.parameter}
    if isinstance(v, ckpt.Storage):
        return {"type": "storage", "dtype": v.dtype, "storage": v.key, "nbytes": v.nbytes}
    if isinstance(v, ckpt.Cycle):
        return {"type": "cycle"}
    raise AssertionError("unexpected %r" % (v,))


def fnum(x):
    if math.isnan(x):
        return "nan"
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    return x


def cli_node(n):
    """The CLI's node with what the Python tree does not carry (the class of a non-dict) and
    set order (a Python set has none) taken out."""
    if isinstance(n, list):
        return [cli_node(x) for x in n]
    if not isinstance(n, dict):
        return n
    out = {k: cli_node(x) for k, x in n.items()}
    if out.get("type") not in ("dict", "object"):
        out.pop("class", None)
    if out.get("type") == "set":
        out["items"] = sorted(out["items"], key=json.dumps)
    return out


class Tree(unittest.TestCase):
    def test_tree_is_inspects(self):
        """For every fixture, the tree of ckpt.open is the one `ckpt inspect --json` writes."""
        import ckpt
        with open(os.path.join(lib.CKPT_FIXTURES, "manifest.json")) as f:
            manifest = json.load(f)
        for m in manifest:
            path = os.path.join(lib.CKPT_FIXTURES, m["file"])
            with self.subTest(file=m["file"]):
                doc = lib.run_json(self, ["inspect", "--json", path])
                with ckpt.open(path) as f:
                    self.assertEqual(f.format, doc["format"])
                    self.assertEqual(inspect_node(f.root), cli_node(doc["root"]))


def resnet_files(d):
    """torchvision resnet18 state dicts as users save them: (name, file, expected sd)."""
    import torch
    import torchvision
    torch.manual_seed(0)
    m = torchvision.models.resnet18(num_classes=7)
    with torch.no_grad():
        for k, v in m.state_dict().items():
            if v.is_floating_point():
                v.copy_(torch.randn(v.shape))   # running stats too: every array differs
    sd = m.state_dict()
    module = {"module." + k: v for k, v in sd.items()}
    train = {"epoch": 90, "arch": "resnet18", "state_dict": module, "best_acc1": 0.75,
             "optimizer": torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9).state_dict()}
    out = []
    for name, obj in (("plain", sd), ("module", module), ("training", train)):
        for fmt in ("zip", "legacy"):
            p = os.path.join(d, "%s_%s.pth" % (name, fmt))
            torch.save(obj, p, _use_new_zipfile_serialization=(fmt == "zip"))
            out.append(("%s_%s" % (name, fmt), p, sd))
    return out


class StateDict(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory()
        cls.files = resnet_files(cls.tmp.name)

    @classmethod
    def tearDownClass(cls):
        cls.tmp.cleanup()

    def test_load_state_dict_equals_torch(self):
        import ckpt
        for name, path, sd in self.files:
            with self.subTest(file=name):
                got = ckpt.load_state_dict(path)
                self.assertEqual(list(got), list(sd))
                for k, t in sd.items():
                    self.assertEqual(got[k].dtype.name, lib.dtype_name(t.dtype), k)
                    self.assertEqual(got[k].shape, tuple(t.shape), k)
                    self.assertEqual(got[k].tobytes(), lib.tensor_bytes(t), k)

    def test_check_is_the_cli_document(self):
        import ckpt
        for name, path, sd in self.files:
            with self.subTest(file=name):
                doc = lib.run_json(self, ["check", "--json", path])
                got = ckpt.check(path)
                self.assertTrue(got["ok"])
                self.assertEqual(got["arch"], "resnet18")
                self.assertEqual(got["num_classes"], 7)
                self.assertEqual([m for m, _ in got["key_map"]], list(sd))
                # the hints name the CLI's options in one and the keywords in the other
                for d in (doc, got):
                    for w in d["warnings"]:
                        w["message"] = w["message"].split(" (choose one")[0]
                self.assertEqual(got, doc)

    def test_check_options_and_failure(self):
        import ckpt
        path = dict((n, p) for n, p, _ in self.files)["training_zip"]
        got = ckpt.check(path, arch="resnet34", num_classes=7)
        self.assertFalse(got["ok"])
        self.assertEqual(got, lib.run_json(self, ["check", "--json", "--arch", "resnet34",
                                                  "--num-classes", "7", path],
                                           ok_codes=(1,)))
        self.assertIn("Missing key(s)", got["error_text"])
        with self.assertRaises(ckpt.Error) as cm:
            ckpt.check(path, key="no/such")
        self.assertEqual(cm.exception.status, "ENOTFOUND")

    def test_against_and_no_model(self):
        import ckpt
        import torch
        path = dict((n, p) for n, p, _ in self.files)["module_legacy"]
        sd = torch.load(path)
        tmpl = os.path.join(self.tmp.name, "template.pth")
        torch.save({k[len("module."):]: v for k, v in list(sd.items())[:-1]}, tmpl)
        got = ckpt.check(path, against=tmpl)
        self.assertFalse(got["ok"])
        self.assertEqual(got["unexpected"], ["fc.bias"])
        doc = lib.run_json(self, ["check", "--json", "--against", tmpl, path], ok_codes=(1,))
        self.assertEqual(got, doc)
        odd = os.path.join(self.tmp.name, "odd.pth")
        torch.save({"model": {"module.w": torch.ones(2), "module.b": torch.zeros(2)}}, odd)
        with self.assertRaises(ckpt.Error) as cm:
            ckpt.check(odd)
        self.assertEqual(cm.exception.status, "EMISMATCH")
        self.assertIn("'model' (2 tensors) matches none", cm.exception.message)
        self.assertEqual({k: v.tolist() for k, v in ckpt.load_state_dict(odd).items()},
                         {"w": [1.0, 1.0], "b": [0.0, 0.0]})

    def test_zero_copy_outlives_close(self):
        import ckpt
        import numpy as np
        import torch
        name, path, sd = self.files[0]
        f = ckpt.open(path)
        t = f["fc.weight"]
        a, b = t.numpy(), t.numpy()
        self.assertTrue(np.shares_memory(a, b))      # both view the file: no copy
        self.assertFalse(a.flags.writeable)
        with self.assertRaises(ValueError):
            a.flags.writeable = True
        f.close()
        with self.assertRaises(ckpt.Error):
            t.numpy()
        del f, t, b
        import gc
        gc.collect()
        self.assertEqual(a.tobytes(), lib.tensor_bytes(torch.load(path)["fc.weight"]))

    def test_strided_is_a_copy(self):
        import ckpt
        import torch
        w = torch.arange(24, dtype=torch.float64).reshape(4, 6)
        path = os.path.join(self.tmp.name, "views.pt")
        torch.save({"t": w.t(), "s": w[:, 1::2], "bf": w.bfloat16().t()}, path)
        ref = torch.load(path)
        with ckpt.open(path) as f:
            for k in ref:
                a = f[k].numpy()
                self.assertTrue(a.flags.owndata, k)
                self.assertEqual(a.tobytes(), torch_bytes(ref[k]), k)
            self.assertEqual(f["t"].numpy("float32").tobytes(),
                             lib.tensor_bytes(ref["t"].float()))


class Odd(unittest.TestCase):
    """Trees Python's pickle makes that a state dict never holds."""

    def setUp(self):
        self.limit = sys.getrecursionlimit()
        sys.setrecursionlimit(20000)   # pickle, json and inspect_node recurse per level

    def tearDown(self):
        sys.setrecursionlimit(self.limit)

    def test_cycle_depth_set_bigint(self):
        import ckpt
        import pickle
        loop = []
        loop.append(loop)
        deep = []
        for _ in range(900):
            deep = [deep]
        obj = {"loop": loop, "deep": deep, "set": {1, "a", (2, 3)}, "fz": frozenset([4]),
               "big": -2**200, "c": 1.5 - 2j, "b": b"\x00\xff", 3: "int key"}
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "odd.pkl")
            with open(path, "wb") as f:
                pickle.dump(obj, f, protocol=4)
            doc = lib.run_json(self, ["inspect", "--json", path])
            with ckpt.open(path) as f:
                self.assertEqual(f.format, "pickle")
                root = f.root
                self.assertIsInstance(root["loop"][0], ckpt.Cycle)
                self.assertEqual(root["set"], obj["set"])
                self.assertEqual(root["fz"], obj["fz"])
                self.assertIsInstance(root["fz"], frozenset)
                for k in ("big", "c", "b", 3):
                    self.assertEqual(root[k], obj[k])
                x, n = root["deep"], 0
                while x:
                    x, n = x[0], n + 1
                self.assertEqual(n, 900)
                self.assertEqual(inspect_node(root), cli_node(doc["root"]))

    def test_shared_references(self):
        """A memoised list used twice is walked once per path, as `ckpt tensors` does; one
        that doubles 40 times is stopped, not walked 2^40 times."""
        import ckpt
        import torch
        with tempfile.TemporaryDirectory() as d:
            small, big = os.path.join(d, "small.pt"), os.path.join(d, "big.pt")
            a = [torch.ones(2)]
            for _ in range(3):
                a = [a, a]
            torch.save({"a": a}, small)
            for _ in range(37):
                a = [a, a]
            torch.save({"a": a}, big)
            doc = lib.run_json(self, ["tensors", "--json", small])
            with ckpt.open(small) as f:
                got = [[key_str(k) for k in p] for p, _ in f.tensors()]
            # `ckpt tensors` lists a shared container once and refers to it after: expand it
            want = []
            for t in doc["tensors"]:
                if "ref" not in t:
                    want.append(t["path"])
                    continue
                ref = t["ref"]
                want += [t["path"] + p[len(ref):] for p in list(want) if p[:len(ref)] == ref]
            self.assertEqual(sorted(got), sorted(want))
            self.assertEqual(len(got), 8)
            with ckpt.open(big) as f:
                with self.assertRaises(ckpt.Error) as cm:
                    f.tensors()
                self.assertEqual(cm.exception.status, "ELIMIT")

    def test_safetensors(self):
        import ckpt
        import torch
        g = torch.Generator().manual_seed(3)
        tensors = {"a.weight": torch.randn(3, 4, generator=g),
                   "b.bias": torch.randn(5, generator=g).bfloat16(),
                   "c.count": torch.tensor([1, -2, 3], dtype=torch.int64)}
        st = {torch.float32: "F32", torch.bfloat16: "BF16", torch.int64: "I64"}
        header, blobs, off = {"__metadata__": {"format": "pt"}}, [], 0
        for k, t in tensors.items():
            b = lib.tensor_bytes(t)
            header[k] = {"dtype": st[t.dtype], "shape": list(t.shape),
                         "data_offsets": [off, off + len(b)]}
            blobs.append(b)
            off += len(b)
        h = json.dumps(header).encode()
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "w.safetensors")
            with open(path, "wb") as f:
                f.write(len(h).to_bytes(8, "little") + h + b"".join(blobs))
            with ckpt.open(path) as f:
                self.assertEqual(f.format, "safetensors")
                self.assertEqual(f.root.attrs, {"format": "pt"})
                for k, t in tensors.items():
                    self.assertEqual(f[k].numpy().tobytes(), torch_bytes(t), k)
            got = ckpt.load_state_dict(path)
            self.assertEqual(sorted(got), sorted(tensors))
            self.assertEqual(got["b.bias"].dtype.name, "float32")


EVIL = """
import os, pickle, sys
import torch
class Evil:
    def __reduce__(self):
        return (os.system, ("touch " + sys.argv[1],))
obj = {"w": torch.ones(3), "payload": Evil()}
torch.save(obj, sys.argv[2])
torch.save(obj, sys.argv[3], _use_new_zipfile_serialization=False)
with open(sys.argv[4], "wb") as f:
    pickle.dump({"payload": Evil()}, f, protocol=2)
"""


class Malicious(unittest.TestCase):
    def test_nothing_runs(self):
        import ckpt
        with tempfile.TemporaryDirectory() as d:
            sentinel = os.path.join(d, "pwned")
            files = [os.path.join(d, x) for x in ("evil.pt", "evil_legacy.pt", "evil.pkl")]
            subprocess.run([sys.executable, "-c", EVIL, sentinel] + files, check=True,
                           env=dict(os.environ, LD_PRELOAD=""))
            self.assertFalse(os.path.exists(sentinel))
            for path in files:
                with self.subTest(file=os.path.basename(path)):
                    with ckpt.open(path) as f:
                        p = f["payload"]
                        self.assertIsInstance(p, ckpt.Object)
                        self.assertEqual(p.name, "posix.system")
                        self.assertEqual(p.args, ("touch " + sentinel,))
                        self.assertIn("dangerous", [g["kind"] for g in f.globals])
                    s = ckpt.scan(path)
                    self.assertFalse(s["safe"])
                    self.assertIn({"posix.system": "dangerous"}.items(),
                                  [{g["name"]: g["kind"]}.items() for g in s["globals"]])
                    cli = lib.run_json(self, ["scan", "--json", path], ok_codes=(1,))
                    cli.pop("file")
                    self.assertEqual(s, cli)
                    if not path.endswith(".pkl"):
                        w = ckpt.load_state_dict(path)   # no model: the dict's tensors
                        self.assertEqual(list(w), ["w"])
                        self.assertEqual(w["w"].tolist(), [1.0, 1.0, 1.0])
                    self.assertFalse(os.path.exists(sentinel))

    def test_errors(self):
        import ckpt
        with tempfile.TemporaryDirectory() as d:
            p = os.path.join(d, "notes.txt")
            with open(p, "w") as f:
                f.write("hello\n")
            for fn in (ckpt.open, ckpt.load_state_dict, ckpt.check):
                with self.assertRaises(ckpt.Error) as cm:
                    fn(p)
                self.assertEqual(cm.exception.status, "EFORMAT")
                self.assertIn(p, str(cm.exception))
                rc, out, err = lib.run_ckpt(["inspect", p])
                self.assertIn(cm.exception.message, err)
            with self.assertRaises(ckpt.Error) as cm:
                ckpt.open(os.path.join(d, "missing.pt"))
            self.assertEqual(cm.exception.status, "EIO")


NO_TORCH = ("import sys; sys.modules['torch'] = None; import ckpt; "
            "print(ckpt.load_state_dict('m.pth')['fc.weight'].shape); "
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'torch' "
            "and sys.modules[m] is not None))")


class WithoutTorch(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        import torch
        import torchvision
        cls.tmp = tempfile.TemporaryDirectory()
        torch.save(torchvision.models.resnet18().state_dict(),
                   os.path.join(cls.tmp.name, "m.pth"))

    @classmethod
    def tearDownClass(cls):
        cls.tmp.cleanup()

    def run_py(self, env):
        out = subprocess.run([sys.executable, "-c", NO_TORCH], cwd=self.tmp.name, env=env,
                             capture_output=True, text=True)
        self.assertEqual(out.returncode, 0, out.stderr)
        return out.stdout.splitlines()

    def test_build_tree(self):
        env = dict(os.environ, PYTHONPATH=PYDIR)
        self.assertEqual(self.run_py(env), ["(1000, 512)", "[]"])

    def test_installed(self):
        with tempfile.TemporaryDirectory() as d:
            subprocess.run(["cmake", "--install", BUILD, "--prefix", d], check=True,
                           stdout=subprocess.DEVNULL)
            site = os.path.join(d, "lib", "python3", "dist-packages")
            env = dict(os.environ, PYTHONPATH=site)
            env.pop("CKPT_LIBRARY")
            self.assertEqual(self.run_py(env), ["(1000, 512)", "[]"])
            out = subprocess.run([sys.executable, "-c", "import ckpt; print(ckpt.LIBRARY_PATH)"],
                                 env=env, capture_output=True, text=True, check=True)
            self.assertTrue(out.stdout.strip().startswith(d + os.sep), out.stdout)


if __name__ == "__main__":
    _preload()
    lib.main("test_python")
