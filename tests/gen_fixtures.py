#!/usr/bin/python3
"""
gen_fixtures.py OUTDIR - write the conformance fixtures with Debian's PyTorch 1.13.

Each fixture object is saved in the zip format (torch.save's default) and in the legacy format
(_use_new_zipfile_serialization=False); a few also with pickle_protocol=4. Beside every file
NAME.pt goes NAME.expected.json, made from what `torch.load(NAME.pt, map_location='cpu')` gives
back (never from the object in memory, never from ckpt):

    {"file": "NAME.pt", "fixture": ..., "format": "zip"|"legacy", "protocol": 2|4,
     "tensors": [{"path", "dtype", "shape", "stride", "storage_offset", "sha256",
                  "requires_grad", "is_parameter"}, ...],      # walk order of ckpt_testlib
     "shared": [[i, j, ...], ...],      # indexes into tensors that share one torch storage
     "root": NODE,                      # a neutral description of the loaded object (describe)
     "globals": ["collections.OrderedDict", ...],   # named by the file's pickles (pickletools)
     "scan_safe": true|false}           # only weights/data globals: `ckpt scan` must exit 0

OUTDIR/manifest.json lists the files. OUTDIR/.stamp holds a hash of this script and of
ckpt_testlib.py; when it matches, nothing is regenerated. Tensors are kept small except the
resnet18 training checkpoint that issue 2's inspect example calls for.
"""

import argparse
import collections
import hashlib
import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import ckpt_testlib as L  # noqa: E402

GEN_VERSION = "1"


def stamp_value():
    h = hashlib.sha256(GEN_VERSION.encode())
    for f in (__file__, L.__file__):
        with open(f, "rb") as fh:
            h.update(fh.read())
    import torch
    h.update(torch.__version__.encode())
    return h.hexdigest()


# ---- the fixture objects ----------------------------------------------------------------------

def fx_dtypes():
    import torch
    g = torch.Generator().manual_seed(1)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    return collections.OrderedDict([
        ("float32", r(5)),
        ("float64", r(2, 3).double()),
        ("float16", r(7).half()),
        ("bfloat16", r(3, 2).bfloat16()),
        ("int8", torch.tensor([-128, -1, 0, 1, 127], dtype=torch.int8)),
        ("int16", torch.tensor([-32768, -2, 0, 300, 32767], dtype=torch.int16)),
        ("int32", torch.tensor([-2**31, -3, 0, 70000, 2**31 - 1], dtype=torch.int32)),
        ("int64", torch.tensor([-2**63, -4, 0, 2**40, 2**63 - 1], dtype=torch.int64)),
        ("uint8", torch.arange(0, 256, 37, dtype=torch.uint8)),
        ("bool", torch.tensor([True, False, True, True])),
        ("complex64", torch.complex(r(3), r(3))),
        ("complex128", torch.complex(r(2, 2).double(), r(2, 2).double())),
    ])


def fx_special():
    import torch
    inf, nan = float("inf"), float("nan")
    f32 = [nan, inf, -inf, -0.0, 0.0, 1e-45, 1.1754942e-38, 3.4028235e38, -3.4028235e38,
           1.1920929e-07]
    f64 = [nan, inf, -inf, -0.0, 5e-324, 2.2250738585072014e-308, 1.7976931348623157e308]
    f16 = [nan, inf, -inf, -0.0, 6e-8, 6.1e-5, 65504.0, -65504.0]
    bf = [nan, inf, -inf, -0.0, 1e-40, 3.3e38]
    return {
        "f32": torch.tensor(f32, dtype=torch.float32),
        "f64": torch.tensor(f64, dtype=torch.float64),
        "f16": torch.tensor(f16, dtype=torch.float16),
        "bf16": torch.tensor(bf, dtype=torch.bfloat16),
        "c64": torch.tensor([complex(nan, inf), complex(-0.0, 1e-45), complex(inf, -inf)],
                            dtype=torch.complex64),
        "c128": torch.tensor([complex(5e-324, nan), complex(-inf, -0.0)], dtype=torch.complex128),
        "neg_nan": -torch.tensor([nan]),
    }


def fx_views():
    import torch
    base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    cube = torch.arange(60, dtype=torch.int32).reshape(3, 4, 5)
    bytes_ = torch.arange(7000, dtype=torch.int64).to(torch.uint8)
    return collections.OrderedDict([
        ("base", base),
        ("rows", base[1:3]),                       # offset 6
        ("col", base[:, 2]),                       # stride 6, offset 2
        ("t", base.t()),                           # transposed
        ("stride2", base.view(-1)[1::2]),          # stride 2, offset 1
        ("step3_2d", base[::2, ::3]),              # strides (12, 3)
        ("expand", torch.ones(1, 3).expand(4, 3)),  # stride 0
        ("expand_scalar", torch.tensor(5.0).expand(2, 3)),  # all strides 0
        ("narrow3d", cube.narrow(1, 1, 2)),        # offset 5
        ("permute", cube.permute(2, 0, 1)),
        ("diag", torch.arange(16.).reshape(4, 4).diagonal()),  # stride 5
        ("u8_stride2", bytes_[3::2]),
        ("unfold", torch.arange(10.).unfold(0, 4, 2)),  # overlapping windows
    ])


def fx_shared():
    import torch
    a = torch.arange(10, dtype=torch.float64)
    b = torch.arange(12, dtype=torch.int16)
    return {
        "first": a[:5],
        "second": a[5:],          # two views of one base, the base itself not saved
        "nested": {"again": a[2:8].view(2, 3)},
        "b_even": b[0::2],
        "b_odd": b[1::2],
        "b_mat": b.view(3, 4).t(),
    }


def fx_tied():
    import torch

    class Tied(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = torch.nn.Embedding(11, 4)
            self.proj = torch.nn.Linear(4, 4)
            self.lm_head = torch.nn.Linear(4, 11, bias=False)
            self.lm_head.weight = self.embed.weight

    torch.manual_seed(3)
    return Tied().state_dict()


def fx_same_twice():
    import torch
    t = torch.arange(6.).reshape(2, 3)
    u = torch.tensor([1, 2, 3])
    return {"x": t, "y": t, "list": [t, u, t], "tuple": (u, u), "d": {"z": t}}


def fx_scalars_empty():
    import torch
    return collections.OrderedDict([
        ("s_f32", torch.tensor(3.5)),
        ("s_i64", torch.tensor(7)),
        ("s_bool", torch.tensor(True)),
        ("s_f16", torch.tensor(-2.0, dtype=torch.float16)),
        ("s_c64", torch.tensor(1 + 2j, dtype=torch.complex64)),
        ("e0", torch.empty(0)),
        ("e03", torch.empty(0, 3)),
        ("e30", torch.zeros(3, 0, dtype=torch.int64)),
        ("e_bool", torch.empty(0, dtype=torch.bool)),
        ("e_bf16", torch.empty(2, 0, 5, dtype=torch.bfloat16)),
        ("one", torch.tensor([1.0])),
        ("one_1x1x1", torch.ones(1, 1, 1, dtype=torch.float64)),
    ])


def fx_params():
    import torch
    torch.manual_seed(4)
    p1 = torch.nn.Parameter(torch.randn(3))
    p2 = torch.nn.Parameter(torch.randn(2, 2), requires_grad=False)
    rg = torch.randn(3, requires_grad=True)
    return {"params": [p1, p2], "rg": rg, "plain": torch.randn(2),
            "pview": torch.nn.Parameter(torch.arange(8.).view(2, 4)[:, 1:3])}


def fx_nested():
    import torch
    t = lambda n, s=0: torch.arange(s, s + n, dtype=torch.float32)  # noqa: E731
    return {
        "a": {"b": {"c": [t(1), (t(2, 1), {"d": t(3, 2)})]}},
        "tup": (t(4, 3),),
        "lol": [[t(1, 9)], [], [t(2, 10), [t(1, 11)]]],
        "od": collections.OrderedDict([("z", t(1, 20)), ("a", t(1, 21)), ("m", t(1, 22))]),
        "empty_dict": {},
        "empty_list": [],
        "int_keys": {0: t(2, 30), 1: t(2, 32), -7: t(1, 34)},
    }


def fx_module_sd():
    import torch
    torch.manual_seed(5)
    m = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
        torch.nn.Flatten(), torch.nn.Linear(4 * 4 * 4, 5), torch.nn.LayerNorm(5))
    m.eval()
    return m.state_dict()


def fx_many():
    import torch
    return collections.OrderedDict(("layer.%d.w" % i, torch.full((2,), float(i)))
                                   for i in range(1200))


def fx_misc():
    import numpy as np
    import torch
    return {
        "str": "héllo ünï ✓",
        "empty_str": "",
        "bytes": b"\x00\xff bytes \x80",
        "empty_bytes": b"",
        "set": {1, 2, 3},
        "frozenset": frozenset({"a"}),
        "none": None,
        "true": True,
        "false": False,
        "int": -5,
        "i32max": 2**31 - 1,
        "i40": 2**40,
        "big": 2**100,
        "neg_big": -2**70 - 1,
        "i64min": -2**63,
        "float": 1.5,
        "neg_float": -0.0,
        "small_float": 5e-324,
        "complex": complex(1.5, -2.0),
        "dtype": torch.float16,
        "size": torch.Size([2, 3]),
        "device": torch.device("cpu"),
        "np_f64": np.float64(0.9327),
        "np_f32": np.float32(0.5),
        "np_i64": np.int64(-12),
        "np_bool": np.bool_(True),
        "tensor": torch.tensor([1.0, 2.0]),
        "tuple4": (1, "two", 3.0, None),
    }


def fx_root_tensor():
    import torch
    return torch.arange(12, dtype=torch.int32).reshape(3, 4)[:, 1:]


def fx_root_list():
    import torch
    return [torch.tensor([1., 2.]), "x", 3, [torch.tensor([True])]]


def fx_root_tuple():
    import torch
    return (torch.tensor(1.), torch.zeros(2, 2, dtype=torch.float16))


def _namespace():
    return argparse.Namespace(arch="resnet18", lr=0.1, momentum=0.9, weight_decay=1e-4,
                              epochs=300, batch_size=256, data="/datasets/imagenet",
                              pretrained=False, gpu=None, schedule=[100, 200],
                              dist_url="tcp://127.0.0.1:23456")


def fx_training_resnet():
    import numpy as np
    import torch
    import torchvision
    torch.manual_seed(6)
    model = torchvision.models.resnet18(num_classes=10)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=30, gamma=0.1)
    x = torch.randn(2, 3, 32, 32)
    y = torch.tensor([1, 7])
    loss = torch.nn.functional.cross_entropy(model(x), y)
    loss.backward()
    opt.step()
    sched.step()
    return {
        "model": model.state_dict(),
        "optimizer": opt.state_dict(),
        "lr_scheduler": sched.state_dict(),
        "epoch": 299,
        "max_accuracy": np.float64(0.9327),
        "config": _namespace(),
        "best_acc1": torch.tensor(93.27),
    }


def fx_training_adam():
    import numpy as np
    import torch
    torch.manual_seed(7)
    model = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.BatchNorm1d(5),
                                torch.nn.ReLU(), torch.nn.Linear(5, 3))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=30)
    loss = model(torch.randn(4, 6)).pow(2).mean()
    loss.backward()
    opt.step()
    sched.step()
    return {
        "model": model.state_dict(),
        "optimizer": opt.state_dict(),
        "lr_scheduler": sched.state_dict(),
        "epoch": 299,
        "max_accuracy": np.float64(0.9327),
        "best_epoch": np.int64(250),
        "loss": np.float32(0.25),
        "config": _namespace(),
        "best_acc1": torch.tensor(93.27),
    }


# name -> (builder, protocols to save with, scan_safe)
FIXTURES = collections.OrderedDict([
    ("dtypes", (fx_dtypes, (2, 4))),
    ("special", (fx_special, (2,))),
    ("views", (fx_views, (2, 4))),
    ("shared", (fx_shared, (2,))),
    ("tied", (fx_tied, (2,))),
    ("same_twice", (fx_same_twice, (2, 4))),
    ("scalars_empty", (fx_scalars_empty, (2,))),
    ("params", (fx_params, (2,))),
    ("nested", (fx_nested, (2,))),
    ("module_sd", (fx_module_sd, (2, 4))),
    ("many", (fx_many, (2,))),
    ("misc", (fx_misc, (2, 4))),
    ("root_tensor", (fx_root_tensor, (2,))),
    ("root_list", (fx_root_list, (2,))),
    ("root_tuple", (fx_root_tuple, (2,))),
    ("training_adam", (fx_training_adam, (2, 4))),
    ("training_resnet", (fx_training_resnet, (2,))),
])


# ---- writing ------------------------------------------------------------------------------

def file_globals(path):
    g, _ = L.file_pickle_globals(path)
    seen = []
    for x in g:
        if x["full"] not in seen:
            seen.append(x["full"])
    return seen


def expected_for(path, fixture, fmt, protocol):
    import torch
    obj = torch.load(path, map_location="cpu")
    pairs = L.walk_tensors(obj)
    globs = file_globals(path)
    return {
        "file": os.path.basename(path),
        "fixture": fixture,
        "format": fmt,
        "protocol": protocol,
        "tensors": [L.tensor_record(t, p) for p, t in pairs],
        "shared": L.storage_groups(pairs),
        "root": L.describe(obj),
        "globals": globs,
        "scan_safe": all(L.known_ok_global(g) for g in globs),
    }


def rezip(src, dst, root=None, compression=None):
    """Copy a torch zip with another root folder name and/or DEFLATE compression."""
    import zipfile
    with zipfile.ZipFile(src) as zin:
        with zipfile.ZipFile(dst, "w", compression or zipfile.ZIP_STORED) as zout:
            for info in zin.infolist():
                name = info.filename
                if root is not None:
                    name = root + name[name.index("/"):]
                zout.writestr(name, zin.read(info.filename))


def generate(outdir):
    import numpy as np
    import torch
    import zipfile
    torch.manual_seed(0)
    np.random.seed(0)
    torch.set_num_threads(1)
    manifest = []

    def finish(path, fixture, fmt, protocol, extra=None):
        exp = expected_for(path, fixture, fmt, protocol)
        if extra:
            exp.update(extra)
        stem = os.path.splitext(path)[0]
        with open(stem + ".expected.json", "w") as f:
            json.dump(exp, f, indent=1, sort_keys=True)
        manifest.append({"file": os.path.basename(path), "fixture": fixture, "format": fmt,
                         "protocol": protocol, "size": os.path.getsize(path),
                         "n_tensors": len(exp["tensors"]), "scan_safe": exp["scan_safe"],
                         "expected": os.path.basename(stem) + ".expected.json"})

    for name, (build, protocols) in FIXTURES.items():
        obj = build()
        for proto in protocols:
            for fmt in ("zip", "legacy"):
                suffix = "_p%d" % proto if proto != 2 else ""
                path = os.path.join(outdir, "%s_%s%s.pt" % (name, fmt, suffix))
                torch.save(obj, path, pickle_protocol=proto,
                           _use_new_zipfile_serialization=(fmt == "zip"))
                finish(path, name, fmt, proto)

    # Zip variants torch also reads: DEFLATE-compressed entries, another root folder name.
    for name in ("dtypes", "views"):
        src = os.path.join(outdir, "%s_zip.pt" % name)
        dst = os.path.join(outdir, "%s_zip_deflate.pt" % name)
        rezip(src, dst, compression=zipfile.ZIP_DEFLATED)
        finish(dst, name, "zip", 2, {"variant": "deflate"})
    src = os.path.join(outdir, "same_twice_zip.pt")
    dst = os.path.join(outdir, "same_twice_zip_rootdot.pt")
    rezip(src, dst, root="foo.bar")
    finish(dst, "same_twice", "zip", 2, {"variant": "root foo.bar"})

    with open(os.path.join(outdir, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1)
    return manifest


def self_check():
    """The hashing rule must reproduce the corpus's expected-torch-1.13.json."""
    import torch
    exp = L.load_expected(os.path.join(L.CORPUS, "expected-torch-1.13.json"))
    for rel in ("burn_reader/bfloat16.pt", "burn_reader/bool.pt", "burn_reader/float16.pt",
                "burn_reader/legacy_shared_storage.pt", "burn_reader/scalar.pt",
                "burn_reader/empty.pt", "candle/fortran_tensor_3d.pth"):
        path = os.path.join(L.CORPUS, rel)
        if not os.path.exists(path):
            continue
        got = [(p, L.dtype_name(t.dtype), list(t.shape), L.tensor_sha256(t))
               for p, t in L.walk_tensors(torch.load(path, map_location="cpu"))]
        want = [(e["path"], e["dtype"], e["shape"], e["sha256"]) for e in exp[rel]["tensors"]]
        if got != want:
            raise SystemExit("gen_fixtures: hashing rule disagrees with the corpus on %s:\n"
                             "  got  %r\n  want %r" % (rel, got, want))


def main():
    if len(sys.argv) != 2:
        raise SystemExit("usage: gen_fixtures.py OUTDIR")
    outdir = os.path.abspath(sys.argv[1])
    t0 = time.time()
    stamp = stamp_value()
    stamp_path = os.path.join(outdir, ".stamp")
    if os.path.exists(stamp_path) and open(stamp_path).read().strip() == stamp:
        print("gen_fixtures: %s is up to date" % outdir)
        return
    self_check()
    os.makedirs(outdir, exist_ok=True)
    for f in os.listdir(outdir):   # only what an earlier run wrote
        if f.endswith((".pt", ".expected.json")) or f in ("manifest.json", ".stamp"):
            os.unlink(os.path.join(outdir, f))
    manifest = generate(outdir)
    with open(stamp_path, "w") as f:
        f.write(stamp + "\n")
    print("gen_fixtures: wrote %d fixtures (%d tensors, %.1f MB) to %s in %.1f s" % (
        len(manifest), sum(m["n_tensors"] for m in manifest),
        sum(m["size"] for m in manifest) / 1e6, outdir, time.time() - t0))


if __name__ == "__main__":
    main()
