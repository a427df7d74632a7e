#!/usr/bin/python3
"""
test_shards.py - shard sets read as one state dict (issue 11, item 3).

  * A resnet50 state dict (float32 and half) split the way transformers' save_pretrained
    splits it (items in order, a new shard when the next would pass max_shard_size; names
    pytorch_model-0000N-of-0000M.bin / model-0000N-of-0000M.safetensors; the index
    {"metadata": {"total_size"}, "weight_map"} with sorted keys), as .bin and as .safetensors:
    opened from the index, from each shard's name, from the folder, and from a shard without
    its index (the siblings by name): check recognises resnet50, extract writes exactly
    model.state_dict() (keys, order, dtypes, bytes), diff finds it identical to the whole file.
  * Broken sets exit 2 naming the problem: a missing shard, a key in two shards, an index
    naming a key its shard does not hold, a shard key the index does not name, a shard name
    that leaves the folder, an index that is not JSON.
"""

import collections
import json
import os
import shutil
import struct
import sys
import tempfile
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import ckpt_testlib as L  # noqa: E402

import torch  # noqa: E402
import torchvision  # noqa: E402

ST_DTYPES = {torch.float32: "F32", torch.float16: "F16", torch.int64: "I64"}


def write_safetensors(path, sd):
    """The safetensors layout (8-byte header size, JSON header, data), from the format spec."""
    hdr, blobs, off = {}, [], 0
    for k, t in sd.items():
        raw = L.tensor_bytes(t)
        hdr[k] = {"dtype": ST_DTYPES[t.dtype], "shape": list(t.shape),
                  "data_offsets": [off, off + len(raw)]}
        blobs.append(raw)
        off += len(raw)
    h = json.dumps(hdr).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))


def save_sharded(folder, sd, safe, max_shard_size):
    """transformers' shard_checkpoint + save_pretrained, without transformers."""
    shards, cur, size = [], collections.OrderedDict(), 0
    for k, t in sd.items():
        n = t.numel() * t.element_size()
        if cur and size + n > max_shard_size:
            shards.append(cur)
            cur, size = collections.OrderedDict(), 0
        cur[k] = t
        size += n
    shards.append(cur)
    stem, ext = ("model", ".safetensors") if safe else ("pytorch_model", ".bin")
    weight_map, names, total = {}, [], 0
    for i, s in enumerate(shards):
        name = "%s-%05d-of-%05d%s" % (stem, i + 1, len(shards), ext)
        names.append(name)
        if safe:
            write_safetensors(os.path.join(folder, name), s)
        else:
            torch.save(s, os.path.join(folder, name))
        for k, t in s.items():
            weight_map[k] = name
            total += t.numel() * t.element_size()
    index = os.path.join(folder, stem + ext + ".index.json")
    with open(index, "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2,
                  sort_keys=True)
    return index, names


class ShardsTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        L.require_bin()
        cls.tmp = tempfile.TemporaryDirectory(prefix="ckpt-shards-")
        torch.manual_seed(0)
        cls.model = torchvision.models.resnet50()

    @classmethod
    def tearDownClass(cls):
        cls.tmp.cleanup()

    def folder(self, name):
        d = os.path.join(self.tmp.name, name)
        shutil.rmtree(d, ignore_errors=True)
        os.makedirs(d)
        return d

    def extract_same(self, src, want, what):
        out = os.path.join(self.tmp.name, "out.pth")
        rc, o, e = L.run_ckpt(["extract", src, "-o", out, "--force"], timeout=120)
        self.assertEqual(rc, 0, "%s: %s%s" % (what, o, e))
        got = torch.load(out, weights_only=True)
        self.assertEqual(list(got), list(want), what)
        for k, t in want.items():
            self.assertEqual(got[k].dtype, t.dtype, "%s: %s" % (what, k))
            self.assertEqual(L.tensor_bytes(got[k]), L.tensor_bytes(t), "%s: %s" % (what, k))
        os.unlink(out)

    def test_sets(self):
        for half in (False, True):
            m = self.model.half() if half else self.model.float()
            want = m.state_dict()
            whole = os.path.join(self.tmp.name, "whole.pth")
            torch.save(want, whole)
            for safe in (False, True):
                what = "%s %s" % ("half" if half else "float", "safetensors" if safe else "bin")
                d = self.folder("set")
                index, names = save_sharded(d, want, safe, 30 << 20 if not half else 15 << 20)
                self.assertGreaterEqual(len(names), 3, what)  # the premise
                for src in [index, d] + [os.path.join(d, n) for n in names]:
                    with self.subTest(what=what, src=os.path.basename(src)):
                        rc, o, e = L.run_ckpt(["check", src], timeout=120)
                        self.assertEqual(rc, 0, o + e)
                        self.assertIn("torchvision.models.resnet50(num_classes=1000)", o)
                        rc, o, e = L.run_ckpt(["diff", src, whole], timeout=120)
                        self.assertEqual(rc, 0, o + e)
                self.extract_same(index, want, what)
                os.unlink(index)  # a shard alone finds its siblings by name
                self.extract_same(os.path.join(d, names[1]), want, what + " no index")

    def broken(self, src, expect, what):
        rc, o, e = L.run_ckpt(["check", src], timeout=60)
        L.check_no_crash(self, rc, o, e, what, allowed=(2,))
        self.assertIn(expect, e, what)

    def test_broken(self):
        sd = torchvision.models.resnet18().state_dict()
        for safe in (False, True):
            ext = ".safetensors" if safe else ".bin"
            d = self.folder("bad")
            index, names = save_sharded(d, sd, safe, 12 << 20)
            with open(index) as f:
                doc = json.load(f)
            keys = list(sd)

            def rewrite(mutate):
                j = json.loads(json.dumps(doc))
                mutate(j)
                with open(index, "w") as f:
                    json.dump(j, f)

            os.rename(os.path.join(d, names[1]), os.path.join(d, "gone"))
            self.broken(index, names[1] + "' (named by", "missing shard" + ext)
            self.broken(os.path.join(d, names[0]), "is missing", "missing shard by name" + ext)
            os.rename(os.path.join(d, "gone"), os.path.join(d, names[1]))
            # a key the index puts in another shard than the one holding it
            rewrite(lambda j: j["weight_map"].__setitem__(keys[0], names[1]))
            self.broken(index, "puts in '%s'" % names[1], "wrong shard" + ext)
            # a key the index names that no shard holds
            rewrite(lambda j: j["weight_map"].__setitem__("ghost.weight", names[0]))
            self.broken(index, "'ghost.weight' in shard", "ghost key" + ext)
            # a shard key the index does not name
            rewrite(lambda j: j["weight_map"].pop(keys[-1]))
            self.broken(index, "which index", "unnamed key" + ext)
            rewrite(lambda j: j["weight_map"].__setitem__(keys[0], "../" + names[0]))
            self.broken(index, "not a file beside it", "outside" + ext)
            with open(index, "w") as f:
                f.write("{\"weight_map\": ")
            self.broken(index, "is not JSON", "bad JSON" + ext)
            # a key in two shards (no index: the siblings by name)
            os.unlink(index)
            first = os.path.join(d, names[0])
            if safe:
                extra = collections.OrderedDict((k, sd[k]) for k in keys[:3])
                extra[keys[-1]] = sd[keys[-1]]
                write_safetensors(first, extra)
            else:
                torch.save({keys[0]: sd[keys[0]], keys[-1]: sd[keys[-1]]}, first)
            self.broken(first, "is in two shards", "duplicate" + ext)


if __name__ == "__main__":
    L.main("test_shards")
