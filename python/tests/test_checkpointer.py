#!/usr/bin/python3
"""ackpt.Checkpointer from Python: round trips, exact resume, torn snapshots,
background errors, retention, arguments and unsupported values (issue 23)."""
import os
import re
import shutil
import tempfile
import unittest

import torch

import ackpt
from ackpt import _ackpt


def make_model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))


def train(model, opt, steps, start):
    for s in range(start, start + steps):
        g = torch.Generator().manual_seed(s)
        x = torch.randn(5, 8, generator=g)
        loss = model(x).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()


def assert_same(tc, a, b, where="state"):
    if isinstance(a, dict):  # an OrderedDict (state_dict()) comes back as a dict
        tc.assertIsInstance(b, dict, where)
    else:
        tc.assertIs(type(a), type(b), where)
    if isinstance(a, torch.Tensor):
        tc.assertEqual(a.dtype, b.dtype, where)
        tc.assertEqual(a.shape, b.shape, where)
        tc.assertTrue(torch.equal(a.view(-1).view(torch.uint8) if a.numel() else a,
                                  b.view(-1).view(torch.uint8) if b.numel() else b), where)
    elif isinstance(a, dict):
        tc.assertEqual(list(a.keys()), list(b.keys()), where)
        for k in a:
            assert_same(tc, a[k], b[k], "%s[%r]" % (where, k))
    elif isinstance(a, (list, tuple)):
        tc.assertEqual(len(a), len(b), where)
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(tc, x, y, "%s[%d]" % (where, i))
    else:
        tc.assertEqual(a, b, where)


class Base(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="ackpt_py_")

    def tearDown(self):
        ackpt.close_all()
        shutil.rmtree(self.dir, ignore_errors=True)

    def ckpt(self, **kw):
        kw.setdefault("save_dir", self.dir)
        kw.setdefault("model_state_save_dir", self.dir)
        kw.setdefault("log_level", "WARN")
        return ackpt.Checkpointer(**kw)


class RoundTrip(Base):
    def test_model_and_adamw_resume_bit_exact(self):
        for compression in ("zstd", "none"):
            with self.subTest(compression=compression):
                shutil.rmtree(self.dir)
                ref = make_model()
                ref_opt = torch.optim.AdamW(ref.parameters(), lr=1e-2)
                train(ref, ref_opt, 10, 0)

                model = make_model()
                opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
                train(model, opt, 4, 0)
                state = {"model": model.state_dict(), "optimizer": opt.state_dict(), "step": 4}
                with self.ckpt(compression=compression) as c:
                    c.save(state, 4)
                with self.ckpt(compression=compression) as c:
                    loaded = c.load()
                # Same shapes and types: int keys, tuples (betas), None (foreach), lists.
                assert_same(self, state, loaded)
                self.assertEqual(sorted(loaded["optimizer"]["state"].keys()), [0, 1, 2, 3])
                self.assertIsInstance(loaded["optimizer"]["param_groups"], list)
                self.assertEqual(loaded["optimizer"]["param_groups"][0]["betas"], (0.9, 0.999))
                self.assertIsNone(loaded["optimizer"]["param_groups"][0]["foreach"])
                fresh = make_model()
                fresh_opt = torch.optim.AdamW(fresh.parameters(), lr=1e-2)
                fresh.load_state_dict(loaded["model"])
                fresh_opt.load_state_dict(loaded["optimizer"])
                train(fresh, fresh_opt, 10 - loaded["step"], loaded["step"])
                for (n, a), b in zip(ref.state_dict().items(), fresh.state_dict().values()):
                    self.assertTrue(torch.equal(a, b), n)

    def test_every_value_kind(self):
        state = {
            "t": {"f32": torch.arange(6, dtype=torch.float32).reshape(2, 3), "bf16": torch.ones(3, dtype=torch.bfloat16),
                  "i64": torch.tensor([1, -2]), "bool": torch.tensor([True, False]), "scalar": torch.tensor(2.5),
                  "empty": torch.empty(0, 4), "noncontig": torch.arange(12.).reshape(3, 4).t()},
            "ints": {0: "zero", 7: [1, 2], -3: None}, "mixed": {"a": 1, 2: "b"},
            "tuple": (1, (2.5, "x"), []), "none": None, "nested": [[None, {"k": (True,)}], {}],
            "float": -0.0, "big": 2 ** 62, "str": "", "bool": False,
        }
        with self.ckpt() as c:
            c.save(state, 1, force=True)
            out = c.load()
            self.assertEqual(c.counters()["saves_completed"], 1)
        state["t"]["noncontig"] = state["t"]["noncontig"].contiguous()
        assert_same(self, state, out)
        self.assertEqual(str(out["float"]), "-0.0")

    def test_save_model_and_groups(self):
        m = make_model()
        with self.ckpt() as c:
            c.save_checkpoint(m.state_dict(), {"epoch": 3}, {"step": 30}, 3, metrics={"val_loss": 0.5})
            c.save_model(m.state_dict(), 3)
            c.wait()
            r = c.load_checkpoint()
            self.assertEqual(r["trainer_state"], {"epoch": 3})
            self.assertEqual(r["metrics"], {"val_loss": 0.5})
            self.assertEqual(c.load()["trainer_backend_state"], {"step": 30})
        model_file = os.path.join(self.dir, "model_model_3.safetensors.zst")
        self.assertTrue(os.path.exists(model_file))
        assert_same(self, m.state_dict(), ackpt.read_state_dict(model_file))

    def test_torn_snapshot(self):
        t = torch.zeros(1 << 20)
        with self.ckpt(compression="none") as c:
            c.save({"t": t, "step": 1}, 1)
            t.fill_(7)  # right after save() returned: the file holds the zeros
            c.wait()
            self.assertEqual(c.load()["t"].abs().sum().item(), 0)
        # With overlap_snapshot, mutating before wait_snapshot() is detected, never written torn.
        with self.ckpt(compression="none", overlap_snapshot=True, delete_existing_checkpoints=True) as c:
            c.save({"t": t, "step": 2}, 2)
            c.wait_snapshot()
            t.fill_(9)
            c.wait()
            self.assertTrue(torch.all(c.load_index(2)["t"] == 7))

    def test_load_into_existing_tensors(self):
        m = make_model()
        opt = torch.optim.AdamW(m.parameters())
        train(m, opt, 1, 0)
        with self.ckpt() as c:
            c.save({"model": m.state_dict(), "optimizer": opt.state_dict()}, 1, force=True)
            fresh = make_model()
            with torch.no_grad():
                for p in fresh.parameters():
                    p.zero_()
            targets = fresh.state_dict()
            out = c.load(into={"model": targets})
            for k, v in m.state_dict().items():
                self.assertTrue(torch.equal(targets[k], v), k)  # read in place
                self.assertEqual(out["model"][k].data_ptr(), targets[k].data_ptr(), k)
            fresh_opt = torch.optim.AdamW(fresh.parameters())
            fresh_opt.load_state_dict(out["optimizer"])
            self.assertEqual(list(out["optimizer"]["state"]), [0, 1, 2, 3])

    def test_load_nothing_and_load_index(self):
        with self.ckpt() as c:
            self.assertIsNone(c.load())
            with self.assertRaises(ackpt.NotFoundError) as e:
                c.load_index(5)
            self.assertEqual(e.exception.code, "kNotFound")
            c.save({"a": 1}, 5, force=True)
            self.assertEqual(c.load_index(5), {"a": 1})

    def test_retention_keep_last(self):
        with self.ckpt(keep_last=2, period=2) as c:
            for i in range(1, 11):
                c.save({"i": i, "w": torch.full((100,), float(i))}, i)
            c.wait()
            self.assertEqual([e["index"] for e in c.list_checkpoints()], [10, 8])
            self.assertGreaterEqual(c.counters()["files_deleted"], 3)
            self.assertEqual(sorted(f for f in os.listdir(self.dir) if f.startswith("model_")),
                             ["model_10.safetensors.zst", "model_8.safetensors.zst"])
            self.assertEqual(c.load()["i"], 10)
        with self.ckpt(keep_best=1, best_metric="val_loss", keep_last=1, delete_existing_checkpoints=True) as c:
            for i, loss in [(1, 0.5), (2, 0.1), (3, 0.9), (4, 0.7)]:
                c.save({"i": i}, i, metrics={"val_loss": loss})
            c.wait()
            self.assertEqual(sorted(e["index"] for e in c.list_checkpoints()), [2, 4])
            self.assertEqual(c.load_best("val_loss")["i"], 2)


class Failures(Base):
    def test_background_failure_raises_at_next_call(self):
        c = self.ckpt(compression="none")
        c.save({"a": torch.ones(10)}, 1, force=True)
        # Replace save_dir by a file: every later write fails (also as root).
        shutil.rmtree(self.dir)
        with open(self.dir, "w") as f:
            f.write("not a directory")
        try:
            try:
                c.save({"a": torch.ones(10)}, 2)
            except ackpt.IOError as e:  # failed in the foreground already
                err = e
            else:
                with self.assertRaises(ackpt.Error) as cm:
                    c.wait()
                err = cm.exception
            self.assertIsInstance(err, ackpt.IOError)
            self.assertIsInstance(err, OSError)
            self.assertEqual(err.code, "kIOError")
            self.assertEqual(err.index, 2)
            self.assertIn(self.dir, err.path)
            self.assertRegex(str(err), "index 2")
            c.wait()  # reported once
        finally:
            c.close()
            os.remove(self.dir)

    def test_busy(self):
        with self.ckpt():
            with self.assertRaises(ackpt.BusyError) as e:
                self.ckpt()
            self.assertIn("pid %d" % os.getpid(), str(e.exception))

    def test_bad_arguments(self):
        with self.assertRaisesRegex(TypeError, "unexpected keyword arguments 'keeplast', 'foo'"):
            ackpt.Checkpointer(save_dir=self.dir, keeplast=2, foo=1)
        with self.assertRaisesRegex(ValueError, "'compression' must be one of 'zstd', 'none', "
                                                "'zstd_byte_grouped', 'auto', not 'lz4'"):
            ackpt.Checkpointer(save_dir=self.dir, compression="lz4")
        with self.assertRaisesRegex(TypeError, "'keep_last' must be int, not str"):
            ackpt.Checkpointer(save_dir=self.dir, keep_last="3")
        with self.assertRaisesRegex(TypeError, "'fsync' must be bool"):
            ackpt.Checkpointer(save_dir=self.dir, fsync=1)
        with self.assertRaises(ackpt.InvalidArgumentError) as e:
            ackpt.Checkpointer(save_dir=self.dir, period=0)
        self.assertIn("period", str(e.exception))
        self.assertIsInstance(e.exception, ValueError)

    def test_unsupported_values_name_their_path(self):
        opt_state = {"state": {0: {"step": torch.tensor(1.0), "foo": {1, 2}}}, "param_groups": []}
        with self.ckpt() as c:
            with self.assertRaises(ackpt.UnsupportedError) as e:
                c.save({"optimizer": opt_state}, 1)
            self.assertEqual(e.exception.key_path, "state['optimizer']['state'][0]['foo']")
            self.assertIn("type 'set'", str(e.exception))
            self.assertIsInstance(e.exception, TypeError)
            for bad, where, what in [({"x": object()}, "state['x']", "object"),
                                     ({"l": [1, b"b"]}, "state['l'][1]", "bytes"),
                                     ({(1, 2): 3}, "state", "dict key of type 'tuple'"),
                                     ({"a": {"1": 1, 1: 2}}, "state['a']", "both the str key"),
                                     ({"": 1}, "state", "empty-string"),
                                     ({"n": 2 ** 70}, "state['n']", "does not fit")]:
                with self.assertRaises(ackpt.Error) as e:
                    c.save(bad, 1)
                self.assertEqual(e.exception.key_path, where)
                self.assertIn(what, str(e.exception))
            with self.assertRaisesRegex(TypeError, "must be a dict"):
                c.save([1], 1)
            c.save({"ok": 1}, 1, force=True)  # still usable
        with self.assertRaisesRegex(ackpt.Error, "closed"):
            c.save({"ok": 1}, 2)


class Arguments(unittest.TestCase):
    def test_every_header_field_is_a_keyword_or_listed(self):
        header = {name for _, name, _ in _ackpt._header_fields()}
        exposed = set(ackpt.FIELDS)
        not_exposed = {n for n, _ in _ackpt._not_exposed()}
        retention = {n for owner, n, _ in _ackpt._header_fields() if owner == "RetentionPolicy"}
        self.assertEqual(header - not_exposed, exposed)
        self.assertTrue(retention <= exposed)
        for name, f in ackpt.FIELDS.items():
            self.assertTrue(f["help"], name)

    def test_defaults_match_the_cpp_struct(self):
        # FIELDS' defaults are read off a default-constructed C++ struct; check them
        # against the "Default: ..." the header comment states, and that the Python
        # signature and the pymarlin dataclass use them.
        import inspect
        from ackpt.pymarlin import DefaultCheckpointerArguments
        sig = inspect.signature(ackpt.Checkpointer.__init__).parameters
        py_args = DefaultCheckpointerArguments()
        names = {"kZstd": "zstd", "kBlock": "block", "kNormal": "normal", "true": True, "false": False,
                 "none": {}, "null": None}
        checked = 0
        for name, f in ackpt.FIELDS.items():
            self.assertEqual(sig[name].default, f["default"], name)
            self.assertEqual(getattr(py_args, name), f["default"], name)
            m = re.search(r"Default: (\"[^\"]*\"|[^ .;,]+(?:\.\d+)?)", f["help"])
            if not m:
                continue
            text = m.group(1)
            if text.startswith('"'):
                want = text.strip('"')
            elif text in names:
                want = names[text]
            elif re.fullmatch(r"-?\d+", text):
                want = int(text)
            else:
                continue
            unit = re.search(r"Default: -?\d+ ([KMG])iB", f["help"])  # "Default: 8 MiB"
            if unit and isinstance(want, int):
                want <<= {"K": 10, "M": 20, "G": 30}[unit.group(1)]
            self.assertEqual(f["default"], want, name)
            checked += 1
        self.assertGreater(checked, 20)
        c = ackpt.Checkpointer(save_dir=tempfile.mkdtemp(), checkpoint=False)
        for name, f in ackpt.FIELDS.items():
            if name not in ("save_dir", "checkpoint"):
                self.assertEqual(c.args[name], f["default"], name)
        c.close()

    def test_help(self):
        doc = ackpt.Checkpointer.__doc__
        self.assertIn("keep_last (int, default 0): Keep the N most recent checkpoints", doc)
        self.assertIn("'zstd_byte_grouped'", doc)


if __name__ == "__main__":
    unittest.main()
