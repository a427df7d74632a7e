#!/usr/bin/python3
"""
test_keymap.py - `ckpt check --json`'s key map (issue 8, item 1): for the chosen architecture,
which file key each model key comes from, and every other key of the dict with why it is left
out.

The expected map is computed here from torch alone: the model's own state_dict() keys and
Python's unwrapping of the dict (a key that starts with the prefix loses it; the last of two
keys that unwrap to one name wins). The map must also *work*: the tensors it names, loaded
under the model's keys, pass load_state_dict(strict=True) in torch 1.13 and are exactly the
intended ones (each tensor of the test files holds its own value).
"""

import collections
import json
import os
import shutil
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ckpt_testlib as L  # noqa: E402

TIMEOUT = 60.0


def fast_init():
    import torch
    for name in ("kaiming_normal_", "kaiming_uniform_", "uniform_", "normal_", "constant_"):
        setattr(torch.nn.init, name, lambda t, *a, **k: t)


def marked(sd, start):
    """sd with tensor i a broadcast of the value start + i: small files, tensors told apart."""
    import torch
    out = collections.OrderedDict()
    for i, (k, v) in enumerate(sd.items()):
        if v.dim() == 0:
            out[k] = torch.tensor(start + i, dtype=v.dtype)
        else:
            out[k] = torch.full((1,), float(start + i), dtype=v.dtype).expand(*v.shape)
    return out


def expected(d, prefix, model_keys):
    """(key map, left out) by Python's rules, from torch's model keys."""
    import torch
    unwrapped, source = collections.OrderedDict(), {}
    for fk, v in d.items():
        if prefix and not fk.startswith(prefix):
            continue   # the dict is filtered to the prefix's sub-tree (issue 8)
        k = fk[len(prefix):] if prefix else fk
        unwrapped[k] = v
        source[k] = fk
    kmap = [[mk, source[mk]] for mk in model_keys
            if mk in unwrapped and isinstance(unwrapped[mk], torch.Tensor)]
    used = {fk for _, fk in kmap}
    left = []
    for fk in d:
        if fk in used:
            continue
        under = not prefix or fk.startswith(prefix)
        k = fk[len(prefix):] if prefix and under else fk
        if not under:
            why = "outside_prefix"
        elif source.get(k) != fk:
            why = "repeated"
        elif k not in model_keys:
            why = "not_in_model"
        else:
            why = "not_a_tensor"
        left.append({"key": fk, "why": why})
    return kmap, left


class KeyMap(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        L.require_bin()
        import torchvision
        fast_init()
        cls.tmp = tempfile.mkdtemp(prefix="ckpt-keymap-")
        cls.model = torchvision.models.resnet18(num_classes=10)
        cls.keys = list(cls.model.state_dict())

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def check(self, name, obj, *args):
        import torch
        path = os.path.join(self.tmp, name + ".pt")
        torch.save(obj, path)
        rc, out, err = L.run_ckpt(["check", path, "--json"] + list(args), timeout=TIMEOUT)
        L.check_no_crash(self, rc, out, err, "ckpt check " + name)
        self.assertIn(rc, (0, 1), err)
        return json.loads(out)

    def assert_map_loads(self, j, d, intended):
        """The map's tensors under the model's keys load strictly and are the intended ones."""
        import torch
        mapped = collections.OrderedDict((mk, d[fk]) for mk, fk in j["key_map"])
        self.model.load_state_dict(mapped, strict=True)   # raises if the map is incomplete
        for mk, t in mapped.items():
            self.assertTrue(torch.equal(t, intended[mk]), mk)

    def test_moco_like(self):
        """Two encoders and a queue under one wrapper: the query encoder, by prefix."""
        import torch
        q = marked(self.model.state_dict(), 1)
        k = marked(self.model.state_dict(), 1000)
        d = collections.OrderedDict()
        for key, v in q.items():
            d["module.encoder_q." + key] = v
        for key, v in k.items():
            d["module.encoder_k." + key] = v
        d["module.queue"] = torch.zeros(1).expand(128, 4096)
        d["module.queue_ptr"] = torch.zeros(1, dtype=torch.long)
        # named: a prefix covering half of the dict is not recognised by itself yet (issue 8)
        j = self.check("moco", {"state_dict": d, "epoch": 200}, "--strip-prefix",
                       "module.encoder_q.", "--arch", "resnet18", "--num-classes", "10")
        kmap, left = expected(d, "module.encoder_q.", self.keys)
        self.assertEqual(j["key_map"], kmap)
        self.assertEqual(j["left_out"], left)
        self.assertEqual(len(j["key_map"]), len(self.keys))
        self.assertEqual({x["why"] for x in j["left_out"]}, {"outside_prefix"})
        self.assert_map_loads(j, d, q)

    def test_extras_and_repeats(self):
        """Keys the model lacks, a model key that is no tensor, a key repeated after unwrapping."""
        q = marked(self.model.state_dict(), 1)
        d = collections.OrderedDict(("module." + key, v) for key, v in q.items())
        d["module.criterion.weight"] = q["fc.bias"]
        d["module.bn1.num_batches_tracked"] = 7          # an int where a tensor belongs
        d["conv1.weight"] = marked(self.model.state_dict(), 500)["conv1.weight"]  # outside
        j = self.check("extras", d, "--strip-prefix", "module.", "--num-classes", "10")
        kmap, left = expected(d, "module.", self.keys)
        self.assertEqual(j["key_map"], kmap)
        self.assertEqual(j["left_out"], left)
        whys = {x["key"]: x["why"] for x in j["left_out"]}
        self.assertEqual(whys["module.criterion.weight"], "not_in_model")
        self.assertEqual(whys["module.bn1.num_batches_tracked"], "not_a_tensor")
        # outside the prefix: left out, so the sub-tree loads alone (not consume_prefix's merge)
        self.assertEqual(whys["conv1.weight"], "outside_prefix")
        self.assertIn(["conv1.weight", "module.conv1.weight"], j["key_map"])

    def test_plain(self):
        """A plain state dict maps onto itself and leaves nothing out."""
        q = marked(self.model.state_dict(), 1)
        j = self.check("plain", q)
        self.assertEqual(j["key_map"], [[k, k] for k in self.keys])
        self.assertEqual(j["left_out"], [])
        self.assert_map_loads(j, q, q)


if __name__ == "__main__":
    unittest.main(verbosity=2)
