#!/usr/bin/python3
"""
gen_seeds.py [--fixtures DIR] - seed corpora for the harnesses, and the CLI harness's files.

Writes, from Debian's PyTorch 1.13 and Python's own pickle/zipfile (never from ckpt):
  fuzz/corpus/scan/    the tests' small fixtures, the spec's vectors, pickles naming os.system
                       behind other formats' magic bytes, an .npy object array, zips with .pkl
  fuzz/corpus/legacy/  legacy-format files: whole (first byte 0) and with the three standard
                       small pickles cut off (first byte 1; fuzz_legacy.c puts them back)
  fuzz/corpus/write/   small state dicts of every dtype, views, shared storages, wrappers
  fuzz/corpus/cli/     command lines (arguments separated by NUL bytes)
  fuzz/cli_files.h     the files the CLI harness's command lines name (a.pt, b.pt, ...)
Seeds are named seed-*, so fuzz/run.sh keeps them when it minimises a corpus. DIR: fixtures made
by tests/gen_fixtures.py (made in a temporary folder when not given).
"""

import argparse
import collections
import io
import json
import os
import pickle
import struct
import subprocess
import sys
import tempfile
import zipfile

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
MAX_SEED = 48 * 1024
torch.manual_seed(0)


class Evil:
    """Pickles as os.system('true'); nothing runs while pickling."""

    def __reduce__(self):
        import os as _os
        return (_os.system, ("true",))


def save(obj, legacy=False, proto=2):
    b = io.BytesIO()
    torch.save(obj, b, _use_new_zipfile_serialization=not legacy, pickle_protocol=proto)
    return b.getvalue()


def safetensors(tensors, metadata=None):
    """The safetensors layout, by hand (the package is not in Debian 12)."""
    names = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
             torch.int64: "I64", torch.int32: "I32", torch.uint8: "U8", torch.bool: "BOOL",
             torch.float64: "F64", torch.int8: "I8", torch.int16: "I16"}
    header, blobs, off = {}, [], 0
    for k, t in tensors.items():
        raw = t.contiguous().view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""
        header[k] = {"dtype": names[t.dtype], "shape": list(t.shape),
                     "data_offsets": [off, off + len(raw)]}
        blobs.append(raw)
        off += len(raw)
    if metadata:
        header["__metadata__"] = metadata
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    return struct.pack("<Q", len(h)) + h + b"".join(blobs)


def small_sd():
    m = torch.nn.Sequential(torch.nn.Conv2d(2, 3, 1), torch.nn.BatchNorm2d(3),
                            torch.nn.Flatten(), torch.nn.Linear(3, 2))
    return m.state_dict()


def write_corpus(name, seeds):
    d = os.path.join(HERE, "corpus", name)
    os.makedirs(d, exist_ok=True)
    for f in os.listdir(d):
        if f.startswith("seed-"):
            os.remove(os.path.join(d, f))
    n = 0
    for k, data in sorted(seeds.items()):
        if len(data) <= MAX_SEED:
            with open(os.path.join(d, "seed-" + k), "wb") as f:
                f.write(data)
            n += 1
    print(f"{name}: {n} seeds")


def fixtures(dirname):
    out = {}
    for f in sorted(os.listdir(dirname)):
        p = os.path.join(dirname, f)
        if f.endswith(".pt") and os.path.getsize(p) <= MAX_SEED:
            out[f[:-3]] = open(p, "rb").read()
    vec = os.path.join(ROOT, "..", "shared", "spec", "vectors")
    if os.path.isdir(vec):
        for f in sorted(os.listdir(vec)):
            p = os.path.join(vec, f)
            if f.endswith(".pt") and os.path.getsize(p) <= MAX_SEED:
                out["vec-" + f[:-3]] = open(p, "rb").read()
    return out


def write_seeds():
    sd = small_sd()
    x = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    base = {
        "dtypes": {str(dt).split(".")[1]: torch.ones(3, dtype=dt) for dt in
                   (torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.int64,
                    torch.int32, torch.int16, torch.int8, torch.uint8, torch.bool,
                    torch.complex64)},
        "views": {"x": x, "t": x.t(), "row": x[1], "col": x[:, 2], "off": x.view(-1)[5:9]},
        "bcast": {"b": torch.ones(3).expand(4, 3), "z": torch.zeros(0, 5), "s": torch.tensor(2.5)},
        "module_sd": sd,
        "wrapped": {"state_dict": collections.OrderedDict(("module." + k, v) for k, v in sd.items()),
                    "epoch": 3, "optimizer": {"lr": 0.1}},
        "half": collections.OrderedDict((k, v.half() if v.is_floating_point() else v)
                                        for k, v in sd.items()),
        "odd_keys": {"": torch.ones(1), "__metadata__": torch.ones(2), "a.b.": torch.ones(1),
                     "\u00e9": torch.zeros(2, dtype=torch.int64)},
    }
    write, legacy, scan = {}, {}, {}
    prefix = save({}, legacy=True)[:137]
    for name, obj in base.items():
        write[name + "_zip"] = save(obj)
        write[name + "_legacy"] = save(obj, legacy=True)
        lg = save(obj, legacy=True)
        legacy[name + "_whole"] = b"\x00" + lg
        if lg.startswith(prefix):
            legacy[name + "_tail"] = b"\x01" + lg[len(prefix):]
    flat = {k: v for k, v in base["dtypes"].items() if k != "complex64"}
    write["st"] = safetensors(flat, {"format": "pt"})
    write["st_views"] = safetensors({"x": x, "t": x.t(), "z": torch.zeros(0, 2)})

    # Pickles torch.load would run, behind other formats' first bytes (issue 9, class 1).
    evil = pickle.dumps(Evil(), protocol=2)
    evil0 = pickle.dumps(Evil(), protocol=0)
    scan["evil_p2"] = evil
    scan["evil_p0"] = evil0
    scan["evil_st_len"] = struct.pack("<Q", 70) + evil
    scan["evil_gif"] = b"GIF89a" + evil0
    scan["evil_bz2"] = b"BZh9" + evil0
    scan["evil_twice"] = pickle.dumps(1, protocol=2) + evil
    scan["evil_module"] = save({"w": torch.ones(2), "x": Evil()})
    scan["evil_legacy"] = save({"w": torch.ones(2), "x": Evil()}, legacy=True)
    z = io.BytesIO()
    with zipfile.ZipFile(z, "w") as zf:
        zf.writestr("archive/data.pkl", evil)
        zf.writestr("archive/extra/other.pkl", evil0)
        zf.writestr("archive/data/0", evil)
    scan["evil_zip"] = z.getvalue()
    npy = io.BytesIO()
    hdr = "{'descr': '|O', 'fortran_order': False, 'shape': (1,), }"
    hdr += " " * (-(len(hdr) + 11) % 64) + "\n"
    npy.write(b"\x93NUMPY\x01\x00" + struct.pack("<H", len(hdr)) + hdr.encode())
    npy.write(pickle.dumps([Evil()], protocol=2))
    scan["evil_npy"] = npy.getvalue()
    for k, v in write.items():
        scan["w-" + k] = v
    return write, legacy, scan


CLI_FILES = {}


def cli_files():
    sd = small_sd()
    CLI_FILES["a.pt"] = save(sd)
    CLI_FILES["b.pt"] = save({"state_dict": collections.OrderedDict(
        ("module." + k, v + 1 if v.is_floating_point() else v) for k, v in sd.items()),
        "epoch": 1})
    CLI_FILES["c.safetensors"] = safetensors({k: v for k, v in sd.items()}, {"format": "pt"})
    CLI_FILES["d.pt"] = save(sd, legacy=True)
    from PIL import Image
    b = io.BytesIO()
    Image.new("RGB", (5, 4), (200, 30, 90)).save(b, "PNG")
    CLI_FILES["i.png"] = b.getvalue()
    CLI_FILES["l.txt"] = b"cat\ndog\n"
    with open(os.path.join(HERE, "cli_files.h"), "w") as f:
        f.write("/* cli_files.h - the files fuzz_cli.c's command lines name. Generated by "
                "fuzz/gen_seeds.py\n * (Debian's PyTorch 1.13, Pillow); do not edit. */\n")
        f.write("static const struct cli_file {\n    const char *name;\n"
                "    const unsigned char *data;\n    size_t size;\n} cli_files[] = {\n")
        for name, data in CLI_FILES.items():
            hexs = "".join("\\x%02x" % c for c in data)
            lines = [hexs[i:i + 96] for i in range(0, len(hexs), 96)]
            f.write('    {"%s",\n     (const unsigned char *)"' % name)
            f.write('"\n     "'.join(lines))
            f.write('",\n     %d},\n' % len(data))
        f.write("};\n")


def cli_seeds():
    lines = [
        ["inspect", "a.pt"], ["inspect", "b.pt", "--json"], ["inspect", "d.pt", "--depth", "1"],
        ["inspect", "c.safetensors", "--depth=0"], ["tensors", "a.pt", "--sha256"],
        ["tensors", "c.safetensors", "--json"], ["scan", "d.pt"], ["scan", "--json", "b.pt"],
        ["check", "a.pt"], ["check", "b.pt", "--against", "a.pt"],
        ["check", "b.pt", "--key", "state_dict", "--strip-prefix", "module.", "--json"],
        ["check", "a.pt", "--arch", "resnet18", "--num-classes", "10"],
        ["diff", "a.pt", "b.pt", "--key-b", "state_dict", "--atol", "1e-3"],
        ["diff", "a.pt", "d.pt", "--json"], ["diff", "c.safetensors", "a.pt"],
        ["extract", "b.pt", "-o", "o.safetensors", "--against", "a.pt", "--dtype", "float16"],
        ["extract", "a.pt", "--output", "o.pth", "--no-check", "--force", "--format", "pth"],
        ["extract", "b.pt", "-o", "o.pt", "--no-check", "--key", "state_dict", "--json"],
        ["run", "a.pt", "i.png", "--topk", "3", "--labels", "l.txt"],
        ["run", "a.pt", "i.png", "--arch", "resnet18", "--resize", "8", "--crop", "4"],
        ["run", "a.pt", "--input", "x.npy", "--features", "--threads", "1", "--backend", "ref"],
        ["help"], ["help", "extract"], ["--version"], ["check", "--help"], ["inspect"],
        ["scan", "a.pt", "--"], ["tensors", "--", "-x"],
    ]
    return {"%02d_%s" % (i, l[0].strip("-")): "\0".join(l).encode() for i, l in enumerate(lines)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--fixtures")
    a = ap.parse_args()
    write, legacy, scan = write_seeds()
    with tempfile.TemporaryDirectory() as tmp:
        fx = a.fixtures
        if not fx:
            fx = tmp
            subprocess.run([sys.executable, os.path.join(ROOT, "tests", "gen_fixtures.py"), fx],
                           check=True, stdout=subprocess.DEVNULL)
        for k, v in fixtures(fx).items():
            scan["fx-" + k] = v
            write["fx-" + k] = v
            if "legacy" in k or v[:2] != b"PK":
                legacy["fx-" + k] = b"\x00" + v
                p = save({}, legacy=True)[:137]
                if v.startswith(p):
                    legacy["fx-" + k + "_tail"] = b"\x01" + v[len(p):]
    write_corpus("scan", scan)
    write_corpus("legacy", legacy)
    write_corpus("write", write)
    cli_files()
    write_corpus("cli", cli_seeds())


if __name__ == "__main__":
    main()
