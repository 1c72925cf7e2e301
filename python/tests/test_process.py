#!/usr/bin/python3
"""Process lifetime (issue 23): interpreter exit with saves in flight (no
hang, no crash, the saves durable), and the pymarlin-shaped loop resuming
after a kill -9."""
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import unittest

SRC = os.environ.get("ACKPT_SOURCE_DIR", os.path.join(os.path.dirname(__file__), "..", ".."))
EXAMPLE = os.path.join(SRC, "examples", "pymarlin_loop.py")
CLI = os.environ.get("ACKPT_CLI")


def run(args, timeout=60, **kw):
    p = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)
    try:
        out, _ = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        out, _ = p.communicate()
        raise AssertionError("hung (killed after %d s): %s" % (timeout, out))
    return p.returncode, out


class Exit(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="ackpt_exit_")

    def tearDown(self):
        shutil.rmtree(self.dir, ignore_errors=True)

    def check_exit(self, code, expect_durable=True):
        rc, out = run([sys.executable, "-c", code, self.dir], timeout=60)
        self.assertEqual(rc, 0, out)
        self.assertNotIn("Traceback", out)
        if expect_durable:
            import ackpt
            with ackpt.Checkpointer(save_dir=self.dir, checkpoint=False, log_level="WARN") as c:
                self.assertEqual(c.load()["i"], 3)
                self.assertEqual(sorted(e["index"] for e in c.list_checkpoints()), [1, 2, 3])

    def test_exit_right_after_save(self):
        self.check_exit("import sys, torch, ackpt\n"
                        "c = ackpt.Checkpointer(save_dir=sys.argv[1], log_level='WARN')\n"
                        "for i in (1, 2, 3): c.save({'i': i, 'w': torch.randn(1 << 21)}, i)\n")

    def test_exit_while_the_checkpointer_is_garbage(self):
        # No atexit drain needed: the last reference dies at module teardown.
        self.check_exit("import sys, torch, ackpt, threading\n"
                        "c = ackpt.Checkpointer(save_dir=sys.argv[1], log_level='WARN')\n"
                        "for i in (1, 2, 3): c.save({'i': i, 'w': torch.randn(1 << 21)}, i)\n"
                        "ackpt._LIVE.clear()\n")

    def test_exit_from_a_thread_and_sys_exit(self):
        self.check_exit("import sys, torch, ackpt\n"
                        "c = ackpt.Checkpointer(save_dir=sys.argv[1], log_level='WARN', overlap_snapshot=True)\n"
                        "for i in (1, 2, 3): c.save({'i': i, 'w': torch.randn(1 << 21)}, i)\n"
                        "sys.exit(0)\n")

    def test_no_ackpt_thread_left_after_close(self):
        rc, out = run([sys.executable, "-c",
                       "import os, sys, torch, ackpt\n"
                       "def threads(): return sorted(open('/proc/self/task/%s/comm' % t).read().strip()"
                       " for t in os.listdir('/proc/self/task'))\n"
                       "c = ackpt.Checkpointer(save_dir=sys.argv[1], log_level='WARN')\n"
                       "c.save({'w': torch.randn(1 << 20)}, 1)\n"
                       "assert any(t.startswith('ackpt') for t in threads()), threads()\n"
                       "c.close()\n"
                       "left = [t for t in threads() if t.startswith('ackpt')]\n"
                       "assert not left, left\n"
                       "print('ok')\n", self.dir])
        self.assertEqual(rc, 0, out)
        self.assertIn("ok", out)


class KillResume(unittest.TestCase):
    def test_pymarlin_loop_resumes_after_kill_9(self):
        d = tempfile.mkdtemp(prefix="ackpt_kill_")
        try:
            ref_dump = os.path.join(d, "ref.pt")
            dump = os.path.join(d, "resumed.pt")
            common = ["--epochs", "6", "--steps-per-epoch", "10"]
            rc, out = run([sys.executable, EXAMPLE, "--save-dir", os.path.join(d, "ref"), "--dump", ref_dump]
                          + common, timeout=90)
            self.assertEqual(rc, 0, out)
            save_dir = os.path.join(d, "run")
            p = subprocess.Popen([sys.executable, EXAMPLE, "--save-dir", save_dir, "--sleep", "0.03"] + common,
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            try:
                lines = []
                for line in p.stdout:  # kill it mid-training, after epoch 2's save() returned
                    lines.append(line)
                    if line.startswith("epoch 2 "):
                        break
                time.sleep(0.1)
                p.send_signal(signal.SIGKILL)
                p.wait(timeout=30)
            finally:
                if p.poll() is None:
                    p.kill()
                    p.wait()
            p.stdout.close()
            self.assertEqual(p.returncode, -signal.SIGKILL, "".join(lines))
            if CLI:
                for f in os.listdir(save_dir):
                    if f.startswith("model_"):
                        subprocess.run([CLI, "verify", os.path.join(save_dir, f)], check=True,
                                       capture_output=True, timeout=60)
            rc, out = run([sys.executable, EXAMPLE, "--save-dir", save_dir, "--dump", dump] + common, timeout=90)
            self.assertEqual(rc, 0, out)
            self.assertRegex(out, r"resumed after epoch [12] ")
            self.assertIn("done: 6 epochs, global step 60", out)
            import torch
            ref, got = torch.load(ref_dump), torch.load(dump)
            for k in ref:
                self.assertTrue(torch.equal(ref[k], got[k]), k)
        finally:
            shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    unittest.main()
