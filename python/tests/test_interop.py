#!/usr/bin/python3
"""C++ <-> Python file interop (issue 23): files written from Python are read
by the C++ `ackpt` CLI (verify, export) and python/ackpt_reader.py with the
same tensor bytes; files the C++ side wrote load through the extension."""
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import unittest

import torch

import ackpt

SRC = os.environ.get("ACKPT_SOURCE_DIR", os.path.join(os.path.dirname(__file__), "..", ".."))
CLI = os.environ.get("ACKPT_CLI", os.path.join(SRC, "build", "tools", "ackpt"))
sys.path.insert(0, os.path.join(SRC, "python"))
import ackpt_reader  # noqa: E402


def read_safetensors(path):
    """{name: (dtype, shape, bytes)} of a plain safetensors file (independent parser)."""
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    for name, e in header.items():
        if name == "__metadata__":
            continue
        a, b = e["data_offsets"]
        out[name] = (e["dtype"], e["shape"], data[a:b])
    return out


def raw(t):
    return t.contiguous().view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""


def state():
    g = torch.Generator().manual_seed(1)
    return {"w": torch.randn(300, 70, generator=g), "h": torch.randn(33, generator=g).half(),
            "b": torch.randn(5, 5, generator=g).bfloat16(), "i": torch.arange(-5, 50),
            "m": torch.tensor([True, False, True]), "step": 12, "lr": 0.25, "name": "py"}


class Interop(unittest.TestCase):
    def setUp(self):
        if not os.path.exists(CLI):
            self.skipTest("the ackpt CLI is not built (%s)" % CLI)
        self.dir = tempfile.mkdtemp(prefix="ackpt_interop_")

    def tearDown(self):
        shutil.rmtree(self.dir, ignore_errors=True)

    def test_python_written_reads_in_cpp(self):
        s = state()
        for compression in ("zstd", "none", "zstd_byte_grouped"):
            with self.subTest(compression=compression):
                d = os.path.join(self.dir, compression)
                with ackpt.Checkpointer(save_dir=d, compression=compression, log_level="WARN") as c:
                    c.save_checkpoint({"model": {k: v for k, v in s.items() if isinstance(v, torch.Tensor)}},
                                      {"lr": s["lr"], "name": s["name"]}, {"step": s["step"]}, 12, force=True)
                    path = c.last_saved_path
                subprocess.run([CLI, "verify", path], check=True, capture_output=True, timeout=60)
                plain = os.path.join(self.dir, compression + ".safetensors")
                subprocess.run([CLI, "export", path, "-o", plain], check=True, capture_output=True, timeout=60)
                tensors = read_safetensors(plain)
                for k, v in s.items():
                    if isinstance(v, torch.Tensor):
                        dtype, shape, data = tensors["module_interface_state/model/" + k]
                        self.assertEqual(shape, list(v.shape), k)
                        self.assertEqual(data, raw(v), k)
                info = json.loads(subprocess.run([CLI, "inspect", path, "--json"], check=True, capture_output=True,
                                                 text=True, timeout=60).stdout)
                self.assertEqual(info["metadata"]["ackpt.index"], "12")
                # The dependency-free reader sees the same tree.
                with ackpt_reader.open(path, as_torch=True) as r:
                    tree = r.state()
                    r.verify()
                self.assertEqual(tree["trainer_backend_state"]["step"], 12)
                self.assertEqual(tree["trainer_state"]["name"], "py")
                self.assertTrue(torch.equal(tree["module_interface_state"]["model"]["b"], s["b"]))

    def test_int_keys_tuples_none_as_cpp_sees_them(self):
        opt = {"state": {0: {"step": torch.tensor(3.0)}}, "param_groups": [{"betas": (0.9, 0.99), "foreach": None}]}
        path = os.path.join(self.dir, "opt.safetensors")
        ackpt.write_state_dict(opt, path, compression="none")
        with ackpt_reader.open(path) as r:
            tree = r.state()
        # Stored as a StateDict can: decimal keys, lists, the string "None", plus the schema.
        self.assertIn("0", tree["state"])
        self.assertEqual(list(tree["param_groups"][0]["betas"]), [0.9, 0.99])
        self.assertEqual(tree["param_groups"][0]["foreach"], "None")
        self.assertIn(ackpt._ackpt.SCHEMA_KEY, tree)
        back = ackpt.read_state_dict(path)
        self.assertEqual(back["param_groups"], [{"betas": (0.9, 0.99), "foreach": None}])
        self.assertEqual(list(back["state"]), [0])

    def test_cpp_written_checkpoints_load_in_python(self):
        # Written by the C++ DefaultCheckpointer (tests/data/v1/generate_v1.cc).
        v1 = os.path.join(SRC, "tests", "data", "v1")
        with ackpt.Checkpointer(save_dir=os.path.join(self.dir, "unused"), load_dir=v1, checkpoint=False,
                                log_level="WARN") as c:
            r = c.load()
            self.assertEqual(r["trainer_backend_state"], {"step": 20})
            self.assertAlmostEqual(r["metrics"]["val_loss"], 0.05)
            m = r["module_interface_state"]
            self.assertTrue(torch.equal(m["w_f32"], torch.arange(0, 40000, dtype=torch.float32).mul(0.001)
                                        .reshape(200, 200)))
            self.assertEqual(m["trainer"]["list"][:2], [1, "two"])
            self.assertEqual(m["w_bf16"].dtype, torch.bfloat16)
            with ackpt_reader.open(os.path.join(v1, "model_20.safetensors.zst"), as_torch=True) as f:
                ref = f.state()["module_interface_state"]
            for k, v in ref.items():
                if isinstance(v, torch.Tensor):
                    self.assertEqual(raw(m[k]), raw(v), k)
        # Written by C++ WriteStateDict via `ackpt convert` from a torch.save file.
        pt = os.path.join(self.dir, "s.pt")
        s = {k: v for k, v in state().items()}
        torch.save(s, pt)
        out = os.path.join(self.dir, "s.safetensors.zst")
        subprocess.run([CLI, "convert", pt, "-o", out], check=True, capture_output=True, timeout=60)
        back = ackpt.read_state_dict(out)
        for k, v in s.items():
            if isinstance(v, torch.Tensor):
                self.assertEqual(back[k].dtype, v.dtype)
                self.assertEqual(raw(back[k]), raw(v), k)
            else:
                self.assertEqual(back[k], v)


    def test_incremental_checkpoints_reference_what_did_not_change(self):
        # incremental=True: the frozen tensor is written once and referenced
        # after; ackpt_reader.py and the extension's load() follow the references.
        d = os.path.join(self.dir, "inc")
        frozen = torch.randn(256, 64, generator=torch.Generator().manual_seed(3))
        adapter = torch.zeros(16)
        with ackpt.Checkpointer(save_dir=d, model_state_save_dir="", compression="none",
                                incremental=True, log_level="WARN") as c:
            for i in range(3):
                c.save({"frozen": frozen, "adapter": adapter, "step": i}, i, force=True)
                adapter.add_(1)  # in place: its version counter moves
            last = c.last_saved_path
        with ackpt_reader.open(last, as_torch=True) as f:
            self.assertEqual(f.references, {"trainer_state/frozen": "model_0.safetensors"})
            self.assertEqual([t.name for t in f.infos], ["trainer_state/adapter"])
            self.assertEqual(raw(f.tensor("trainer_state/frozen")), raw(frozen))
            st = f.state()["trainer_state"]
            self.assertEqual(st["step"], 2)
            self.assertEqual(raw(st["adapter"]), raw(torch.full((16,), 2.0)))
            self.assertEqual(f.verify()["references"], 1)
        with ackpt.Checkpointer(save_dir=d, model_state_save_dir="", checkpoint=False,
                                log_level="WARN") as c:
            back = c.load()
            self.assertEqual(raw(back["frozen"]), raw(frozen))
            self.assertEqual(back["step"], 2)
        # The base gone: the reader says which file is missing, and load()
        # falls back to the newest checkpoint that does not need it (none).
        os.remove(os.path.join(d, "model_0.safetensors"))
        with self.assertRaisesRegex(ackpt_reader.CorruptionError, "model_0.safetensors"):
            ackpt_reader.open(last)
        r = subprocess.run([CLI, "verify", last], capture_output=True, timeout=60)
        self.assertNotEqual(r.returncode, 0)


if __name__ == "__main__":
    unittest.main()
