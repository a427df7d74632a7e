"""
test_many.py - many inputs (issue 13): directories, --files-from, --jsonl, --skip-done,
--shard, on GNU parallel and a Slurm job array, and the progress line on a terminal.

A directory of 1,000 small checkpoints is made with torch and Python's pickle: weights-only
state dicts, files whose pickle calls os.system (never run by ckpt), and truncated copies.
What each record must say comes from how the file was made, not from ckpt.
"""

import json
import os
import pickle
import pty
import select
import shutil
import subprocess
import sys
import tempfile
import time
import unittest

import ckpt_testlib as L

N_FILES = 1000


class Evil:
    """Its pickle calls os.system('touch SENTINEL') when loaded with pickle or torch.load."""

    def __init__(self, sentinel):
        self.sentinel = sentinel

    def __reduce__(self):
        return (os.system, ("touch " + self.sentinel,))


def records(out):
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def by_file(recs):
    return {r["file"]: r for r in recs}


class TestMany(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        import torch
        cls.tmp = tempfile.mkdtemp(prefix="ckpt-many-")
        cls.dir = os.path.join(cls.tmp, "models")
        cls.sentinel = os.path.join(cls.tmp, "PAYLOAD_RAN")
        os.makedirs(os.path.join(cls.dir, "sub", "deeper"))
        bases = os.path.join(cls.tmp, "bases")
        os.makedirs(bases)
        safe = []
        for k in range(3):
            p = os.path.join(bases, "safe%d.pt" % k)
            torch.save({"w": torch.full((k + 1, 2), float(k)), "b": torch.zeros(k + 1)}, p)
            safe.append(p)
        p = os.path.join(bases, "legacy.pt")
        torch.save({"w": torch.ones(3)}, p, _use_new_zipfile_serialization=False)
        safe.append(p)
        evil = os.path.join(bases, "evil.pkl")
        with open(evil, "wb") as f:
            pickle.dump({"w": 1, "x": Evil(cls.sentinel)}, f, protocol=2)
        with open(safe[0], "rb") as f:
            blob = f.read()
        cls.kind = {}  # path as ckpt names it (DIR/...) -> "safe", "evil", "corrupt"
        exts = [".pt", ".pth", ".bin", ".ckpt", ".tar"]
        for i in range(N_FILES):
            sub = ["", "sub", os.path.join("sub", "deeper")][i % 3]
            name = os.path.join(cls.dir, sub, "m%04d%s" % (i, exts[i % len(exts)]))
            if i % 10 == 3:
                kind = "evil"
                shutil.copyfile(evil, name)
            elif i % 10 == 7:
                kind = "corrupt"  # a zip cut short: no central directory
                with open(name, "wb") as f:
                    f.write(blob[: 40 + (i % 200)])
            else:
                kind = "safe"
                shutil.copyfile(safe[i % len(safe)], name)
            cls.kind[name] = kind
        # Not taken without --all, and a symlink loop that must not be followed.
        with open(os.path.join(cls.dir, "README.txt"), "w") as f:
            f.write("not a checkpoint\n")
        os.symlink("..", os.path.join(cls.dir, "sub", "loop"))
        cls.expected_rc = 2  # corrupt files are there

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def run_scan(self, *args, timeout=300, **kw):
        return L.run_ckpt(["scan"] + list(args), timeout=timeout, **kw)

    def check_records(self, recs, what):
        self.assertEqual(len(recs), N_FILES, "%s: %d records" % (what, len(recs)))
        self.assertEqual(sorted(r["file"] for r in recs), sorted(self.kind), what)
        for r in recs:
            kind = self.kind[r["file"]]
            if kind == "corrupt":
                self.assertIn("error", r, "%s: %s" % (what, r))
                self.assertTrue(r["error"]["message"], r)
                self.assertIn(r["error"]["status"], ("ECORRUPT", "EFORMAT"), r)
            else:
                self.assertNotIn("error", r, "%s: %s" % (what, r))
                self.assertEqual(r["safe"], kind == "safe", "%s: %s" % (what, r))
                if kind == "evil":
                    self.assertIn("posix.system", [g["name"] for g in r["globals"]], r)

    def full_run(self):
        if not hasattr(type(self), "_full"):
            t0 = time.time()
            rc, out, err = self.run_scan("-r", self.dir, "--jsonl")
            type(self)._full = (rc, out, err, time.time() - t0)
        return type(self)._full

    def test_1_thousand_files(self):
        """The done-when: scan -r DIR --jsonl prints 1,000 records and exits 2."""
        L.require_bin(self)
        rc, out, err, secs = self.full_run()
        print("scan -r over %d files: %.2f s" % (N_FILES, secs))
        self.assertEqual(rc, self.expected_rc, err[-500:])
        self.check_records(records(out), "scan -r --jsonl")
        self.assertFalse(os.path.exists(self.sentinel), "the payload ran")
        # stderr holds ckpt's own lines only (a sanitizer's report would show here).
        for line in err.splitlines():
            self.assertTrue(line.startswith("ckpt: "), line)
        # Each line stands alone.
        for line in out.splitlines():
            json.loads(line)

    def test_2_exit_status_summarises(self):
        L.require_bin(self)
        safe = [p for p, k in self.kind.items() if k == "safe"][:5]
        evil = [p for p, k in self.kind.items() if k == "evil"][:2]
        bad = [p for p, k in self.kind.items() if k == "corrupt"][:1]
        self.assertEqual(self.run_scan(*safe)[0], 0)
        self.assertEqual(self.run_scan(*(safe + evil))[0], 1)
        rc, out, err = self.run_scan(*(bad + safe + evil))
        self.assertEqual(rc, 2)
        # The bad file did not stop the others: a human report for each readable one.
        for p in safe + evil:
            self.assertIn(p + ": ", out)
        self.assertIn(bad[0], err)
        # Without -r only the top level; --all takes the README too.
        rc, out, _ = self.run_scan(self.dir, "--jsonl")
        top = [p for p in self.kind if os.path.dirname(p) == self.dir]
        self.assertEqual(sorted(r["file"] for r in records(out)), sorted(top))
        rc, out, _ = self.run_scan(self.dir, "--jsonl", "--all")
        files = [r["file"] for r in records(out)]
        self.assertIn(os.path.join(self.dir, "README.txt"), files)
        self.assertEqual(len(files), len(top) + 1)

    def test_3_files_from(self):
        L.require_bin(self)
        names = sorted(self.kind)[:50]
        p = subprocess.run([L.CKPT_BIN, "scan", "--files-from", "-", "-0", "--jsonl"],
                           input=b"\0".join(n.encode() for n in names) + b"\0",
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=60)
        self.assertEqual([r["file"] for r in records(p.stdout.decode())], names)
        lst = os.path.join(self.tmp, "list.txt")
        with open(lst, "w") as f:
            f.write("\n".join(names[:10]) + "\n")
        rc, out, err = self.run_scan("--files-from", lst, "--jsonl")
        self.assertEqual([r["file"] for r in records(out)], names[:10])

    def test_4_skip_done(self):
        """A killed run's output (a torn last line included) lets the next run do the rest."""
        L.require_bin(self)
        rc, out, err, _ = self.full_run()
        lines = out.splitlines(keepends=True)
        done = os.path.join(self.tmp, "done.jsonl")
        with open(done, "w") as f:
            f.writelines(lines[:400])
            f.write(lines[400][:20])  # torn
        rc2, out2, err2 = self.run_scan("-r", self.dir, "--jsonl", "--skip-done", done)
        rest = records(out2)
        self.assertEqual(len(rest), N_FILES - 400)
        self.check_records(records("".join(lines[:400])) + rest, "skip-done union")

    def check_shards(self, outs, what):
        recs = [r for o in outs for r in records(o)]
        self.check_records(recs, what)
        full = by_file(records(self.full_run()[1]))
        self.assertEqual(by_file(recs), full, what)
        self.assertTrue(all(records(o) for o in outs), "%s: an empty shard" % what)

    def test_5_shards_in_process(self):
        L.require_bin(self)
        outs = []
        for i in range(4):
            rc, out, err = self.run_scan("-r", self.dir, "--jsonl", "--shard", "%d/4" % i)
            outs.append(out)
        self.check_shards(outs, "--shard i/4")
        # Listing order does not matter: the same share from a reversed --files-from list.
        lst = os.path.join(self.tmp, "rev.txt")
        with open(lst, "w") as f:
            f.write("\n".join(sorted(self.kind, reverse=True)) + "\n")
        rc, out, err = self.run_scan("--files-from", lst, "--jsonl", "--shard", "1/4")
        self.assertEqual(sorted(r["file"] for r in records(out)),
                         sorted(r["file"] for r in records(outs[1])))
        for bad in ("4/4", "1/0", "x", "1/", "-1/3"):
            rc, out, err = self.run_scan(self.dir, "--shard", bad)
            self.assertEqual(rc, 2, bad)
            self.assertIn("--shard", err)

    def test_6_gnu_parallel(self):
        L.require_bin(self)
        par = shutil.which("parallel")
        if not par:
            self.fail("GNU parallel is not installed (scripts/setup-debian.sh installs it)")
        n = 3
        outdir = os.path.join(self.tmp, "par")
        os.makedirs(outdir)
        cmd = [par, "-j", "2", L.CKPT_BIN + " scan -r " + self.dir +
               " --jsonl --shard {}/%d > %s/shard-{}.jsonl" % (n, outdir), ":::"] + \
            [str(i) for i in range(n)]
        p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=300)
        # parallel's status counts the jobs that failed: each shard holds corrupt files.
        self.assertEqual(p.returncode, n, p.stderr.decode()[-500:])
        outs = []
        for i in range(n):
            with open(os.path.join(outdir, "shard-%d.jsonl" % i)) as f:
                outs.append(f.read())
        self.check_shards(outs, "GNU parallel")

    def test_7_slurm(self):
        """A Slurm job array on a one-node cluster started here (slurmctld + slurmd)."""
        L.require_bin(self)
        need = [shutil.which(x) for x in ("slurmctld", "slurmd", "sbatch", "sinfo")]
        if not all(need) or os.geteuid() != 0:
            self.skipTest("slurm-wlm not installed, or not root (slurmd runs jobs as root)")
        T = tempfile.mkdtemp(prefix="slurm-", dir=self.tmp)
        for d in ("state", "spool", "out"):
            os.makedirs(os.path.join(T, d))
        host = subprocess.check_output(["hostname", "-s"]).decode().strip()
        port = 20000 + os.getpid() % 20000
        conf = os.path.join(T, "slurm.conf")
        with open(conf, "w") as f:
            f.write("""ClusterName=ckpttest
SlurmctldHost={host}
AuthType=auth/none
CredType=cred/none
SlurmctldPort={p1}
SlurmdPort={p2}
StateSaveLocation={T}/state
SlurmdSpoolDir={T}/spool
SlurmctldPidFile={T}/ctld.pid
SlurmdPidFile={T}/d.pid
ProctrackType=proctrack/pgid
TaskPlugin=task/none
SchedulerType=sched/builtin
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
SlurmUser=root
SlurmdUser=root
MpiDefault=none
JobCompType=jobcomp/none
AccountingStorageType=accounting_storage/none
SlurmctldLogFile={T}/ctld.log
SlurmdLogFile={T}/d.log
NodeName={host} CPUs={cpus} State=UNKNOWN
PartitionName=ckpt Nodes=ALL Default=YES MaxTime=INFINITE State=UP
""".format(host=host, p1=port, p2=port + 1, T=T, cpus=os.cpu_count()))
        env = dict(os.environ, SLURM_CONF=conf)
        pids = []
        try:
            subprocess.run(["slurmctld", "-i"], env=env, check=True, timeout=30)
            subprocess.run(["slurmd"], env=env, check=True, timeout=30)
            for pf in ("ctld.pid", "d.pid"):
                for _ in range(50):
                    if os.path.exists(os.path.join(T, pf)):
                        break
                    time.sleep(0.1)
                with open(os.path.join(T, pf)) as f:
                    pids.append(int(f.read()))
            n = 3
            script = os.path.join(T, "job.sh")
            with open(script, "w") as f:
                f.write("#!/bin/sh\nexec %s scan -r %s --jsonl --shard "
                        "$SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT\n" % (L.CKPT_BIN, self.dir))
            p = subprocess.run(["sbatch", "--wait", "--array=0-%d" % (n - 1),
                                "--output=%s/out/%%a.jsonl" % T, "--error=%s/out/%%a.err" % T,
                                script], env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, timeout=600)
            outs = []
            for i in range(n):
                with open(os.path.join(T, "out", "%d.jsonl" % i)) as f:
                    outs.append(f.read())
            self.check_shards(outs, "Slurm job array")
            print("slurm: %d array tasks, sbatch exit %d" % (n, p.returncode))
        finally:
            for pid in pids:
                try:
                    os.kill(pid, 15)
                except ProcessLookupError:
                    pass

    def test_8_progress_on_tty_only(self):
        L.require_bin(self)
        names = sorted(self.kind)[:60]
        lst = os.path.join(self.tmp, "sixty.txt")
        with open(lst, "w") as f:
            f.write("\n".join(names) + "\n")

        def on_pty(extra):
            master, slave = pty.openpty()
            p = subprocess.Popen([L.CKPT_BIN, "scan", "--files-from", lst, "--jsonl"] + extra,
                                 stdout=subprocess.PIPE, stderr=slave, stdin=subprocess.DEVNULL)
            os.close(slave)
            err = b""
            out = p.stdout.read()
            p.stdout.close()
            p.wait(timeout=60)
            while True:
                r, _, _ = select.select([master], [], [], 0.5)
                if not r:
                    break
                try:
                    chunk = os.read(master, 65536)
                except OSError:
                    break
                if not chunk:
                    break
                err += chunk
            os.close(master)
            return out.decode(), err.decode("utf-8", "replace")

        out_tty, err_tty = on_pty([])
        self.assertIn("60/60 files", err_tty)
        self.assertIn("\r", err_tty)
        self.assertNotIn("files", out_tty)
        out_q, err_q = on_pty(["--quiet"])
        self.assertNotIn("/60 files", err_q)
        rc, out_pipe, err_pipe = self.run_scan("--files-from", lst, "--jsonl")
        self.assertNotIn("/60 files", err_pipe)
        self.assertEqual(out_tty, out_pipe)
        self.assertEqual(out_q, out_pipe)

    def test_9_other_commands(self):
        """inspect, tensors and check take directories and write one record per input."""
        L.require_bin(self)
        sub = os.path.join(self.dir, "sub", "deeper")
        mine = sorted(p for p in self.kind if os.path.dirname(p) == sub)
        for cmd in ("inspect", "tensors", "check"):
            rc, out, err = L.run_ckpt([cmd, sub, "--jsonl"], timeout=120)
            recs = records(out)
            self.assertEqual([r["file"] for r in recs], mine, cmd)
            for r in recs:
                if self.kind[r["file"]] == "corrupt":
                    self.assertIn("error", r, cmd)
            self.assertEqual(rc, 2, cmd)
        # A single file's --json document is the --jsonl record.
        one = [p for p in mine if self.kind[p] == "safe"][0]
        rc1, out1, _ = L.run_ckpt(["tensors", one, "--json"])
        rc2, out2, _ = L.run_ckpt(["tensors", one, "--jsonl"])
        self.assertEqual((rc1, out1), (rc2, out2))


class TestRunMany(unittest.TestCase):
    """run over a directory of images: one --jsonl record per image, ImageNet-1k names."""

    @classmethod
    def setUpClass(cls):
        import numpy as np
        import torch
        import torchvision
        from PIL import Image
        cls.tmp = tempfile.mkdtemp(prefix="ckpt-runmany-")
        torch.manual_seed(0)
        cls.model = os.path.join(cls.tmp, "r18.pth")
        torch.save(torchvision.models.resnet18().state_dict(), cls.model)
        cls.model10 = os.path.join(cls.tmp, "r18_10.pth")
        torch.save(torchvision.models.resnet18(num_classes=10).state_dict(), cls.model10)
        cls.images = os.path.join(cls.tmp, "images")
        os.makedirs(os.path.join(cls.images, "more"))
        rng = np.random.default_rng(1)
        cls.names = []
        for i in range(5):
            p = os.path.join(cls.images, "more" if i % 2 else "", "img%d.png" % i)
            Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(p)
            cls.names.append(p)
        cls.broken = os.path.join(cls.images, "broken.jpg")
        with open(cls.broken, "wb") as f:
            f.write(b"\xff\xd8 not a jpeg")
        with open(os.path.join(cls.images, "notes.txt"), "w") as f:
            f.write("skipped: not an image extension\n")
        # The reference: torchvision's own list of the weights' categories.
        from torchvision.models import ResNet18_Weights
        cls.categories = ResNet18_Weights.IMAGENET1K_V1.meta["categories"]

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def test_jsonl_per_image_with_imagenet_names(self):
        L.require_bin(self)
        rc, out, err = L.run_ckpt(["run", self.model, self.images, "-r", "--jsonl",
                                   "--threads", "1"], timeout=300)
        self.assertEqual(rc, 2, err)  # the broken image
        recs = records(out)
        self.assertEqual(sorted(r["file"] for r in recs), sorted(self.names + [self.broken]))
        for r in recs:
            if r["file"] == self.broken:
                self.assertEqual(r["error"]["status"], "EFORMAT", r)
                continue
            self.assertEqual(r["model"]["labels"], "imagenet1k")
            self.assertEqual(r["model"]["file"], self.model)
            for t in r["topk"]:
                self.assertEqual(t["label"], self.categories[t["index"]], t)
        # The same results as one --json document.
        rc, out2, err = L.run_ckpt(["run", self.model, self.images, "-r", "--json",
                                    "--threads", "1"], timeout=300)
        doc = json.loads(out2)
        want = {r["image"]: r["topk"] for r in doc["results"] if "topk" in r}
        self.assertEqual({r["file"]: r["topk"] for r in recs if "topk" in r}, want)

    def test_names_header_and_off(self):
        L.require_bin(self)
        img = self.names[0]
        rc, out, err = L.run_ckpt(["run", self.model, img, "--topk", "3", "--threads", "1"],
                                  timeout=120)
        self.assertEqual(rc, 0, err)
        self.assertIn("ImageNet-1k class names", out.splitlines()[0])
        rows = out.splitlines()[2:5]
        for row in rows:
            idx, name = row.split(None, 2)[1:]
            self.assertEqual(name, self.categories[int(idx)])
        rc, out, err = L.run_ckpt(["run", self.model, img, "--json", "--labels", "none",
                                   "--threads", "1"], timeout=120)
        doc = json.loads(out)
        self.assertIsNone(doc["model"]["labels"])
        self.assertTrue(all(t["label"] is None for t in doc["results"][0]["topk"]))
        # A 10-class head gets no ImageNet names.
        rc, out, err = L.run_ckpt(["run", self.model10, img, "--json", "--threads", "1"],
                                  timeout=120)
        doc = json.loads(out)
        self.assertIsNone(doc["model"]["labels"])
        self.assertTrue(all(t["label"] is None for t in doc["results"][0]["topk"]))


if __name__ == "__main__":
    L.main("test_many")
