"""ackpt from Python: asynchronous, checksummed checkpoints of PyTorch state.

``save()`` copies the tensors into reusable host staging memory (with the GIL
released) and returns; C++ writer threads hash, compress (zstd), write, fsync
and atomically rename the file in the background. Files are ackpt's
safetensors-compatible format: the C++ library, the ``ackpt`` CLI and
``python/ackpt_reader.py`` read them.

    import ackpt
    with ackpt.Checkpointer(save_dir="checkpoints", keep_last=3) as ckpt:
        state = ckpt.load()                      # newest valid checkpoint, or None
        if state is not None:
            model.load_state_dict(state["model"]); opt.load_state_dict(state["optimizer"])
        ...
        ckpt.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "step": step}, step)

State is nested dicts (str or int keys), lists and tuples of torch.Tensor,
int, float, bool, str and None; ``load()`` returns the same types. See the
README's Python section for how what ackpt's StateDict cannot hold (int keys,
tuples, None) is stored.
"""
import atexit
import inspect
import threading
import weakref

from . import _ackpt
from ._errors import (BusyError, CorruptionError, Error, InvalidArgumentError, IOError,  # noqa: F401,A004
                      NotFoundError, TimedOutError, UnsupportedError)

__all__ = ["Checkpointer", "Error", "InvalidArgumentError", "IOError", "CorruptionError",
           "NotFoundError", "UnsupportedError", "TimedOutError", "BusyError", "FIELDS",
           "read_state_dict", "write_state_dict", "close_all"]

#: Every keyword argument of Checkpointer: {name: {"type", "default", "help", "owner", "cpp_type"}}.
#: Defaults are read off a default-constructed C++ DefaultCheckpointerArguments; help texts are
#: the comments of the C++ fields (generated from the headers at build time).
FIELDS = {f["name"]: f for f in _ackpt._fields()}
ENUM_VALUES = _ackpt._enum_values()

_GROUPS = ("module_interface_state", "trainer_state", "trainer_backend_state")
_LIVE = weakref.WeakSet()
_LIVE_LOCK = threading.Lock()

read_state_dict = _ackpt.read_state_dict
write_state_dict = _ackpt.write_state_dict


def _field_doc():
    lines = []
    for name, f in FIELDS.items():
        extra = ""
        if name in ENUM_VALUES:
            extra = " One of: " + ", ".join(repr(v) for v in ENUM_VALUES[name]) + "."
        lines.append("    %s (%s, default %r): %s%s" % (name, f["type"], f["default"], f["help"], extra))
    return "\n".join(lines)


class Checkpointer:
    """ackpt's DefaultCheckpointer. Every keyword argument is a field of the
    C++ DefaultCheckpointerArguments (or of the EngineOptions / WriteOptions
    it extends, or of its RetentionPolicy), with the same name and default.
    Enums are strings (compression="zstd" | "none" | "zstd_byte_grouped" | "auto").

    A writing checkpointer (checkpoint=True) owns save_dir: a second one on
    the same directory raises ackpt.BusyError. Use it as a context manager,
    or call close(): both wait until every save is durable. Checkpointers
    still open at interpreter exit are drained and closed by an atexit hook.

Keyword arguments:
"""

    def __init__(self, **kwargs):
        self._c = _ackpt._Checkpointer(kwargs)
        with _LIVE_LOCK:
            _LIVE.add(self)

    # ---- saving -------------------------------------------------------------
    def save(self, state, index, force=False, metrics=None):
        """Saves `state` (a dict) under `index` if index % period == 0 or force.

        Returns once the tensors are copied (the GIL is released meanwhile);
        force=True returns once the file and every earlier save is durable.
        `metrics` ({name: float}) are stored in the file for keep_best /
        load_best. Raises a pending background error first (that save is then
        not made). The dict is stored as the C++ Checkpoint's trainer_state.
        """
        if not isinstance(state, dict):
            raise TypeError("save() state must be a dict, not %s" % type(state).__name__)
        self._c.save(None, state, None, int(index), bool(force), metrics, "dict")

    def save_checkpoint(self, module_interface_state, trainer_state, trainer_backend_state, index,
                        force=False, metrics=None):
        """Saves the three state groups of pymarlin's (and ackpt::)Checkpoint."""
        self._c.save(module_interface_state, trainer_state, trainer_backend_state, int(index),
                     bool(force), metrics, "")

    def save_model(self, state, index):
        """Writes `state` (e.g. model.state_dict()) as
        {file_prefix}_model_{index}.{file_ext}[.zst] in model_state_save_dir."""
        self._c.save_model(state, int(index))

    def wait(self):
        """Returns once every save so far is durable; raises a background error."""
        self._c.wait()

    def wait_snapshot(self):
        """With overlap_snapshot=True: returns once the last save's copy is done
        (call it before modifying saved tensors in place, e.g. optimizer.step())."""
        self._c.wait_snapshot()

    # ---- loading ------------------------------------------------------------
    @staticmethod
    def _result(r, groups):
        if r is None:
            return None
        mis, ts, tbs, metrics, layout, path = r
        if layout == "dict" and not groups:
            return ts
        return {"module_interface_state": mis, "trainer_state": ts, "trainer_backend_state": tbs,
                "metrics": metrics, "path": path, "layout": layout}

    def load(self, into=None):
        """The newest valid checkpoint (or the one load_dir / load_filename
        name), as saved: the dict given to save(). A checkpoint written with
        save_checkpoint() or from C++ comes back as a dict of its three
        groups, "metrics" and "path". None if there is none.

        into: a state shaped like the saved one (e.g. {"model":
        model.state_dict(), ...}) whose tensors are read into in place where
        the checkpoint has a tensor of the same dtype and shape at the same
        path; the returned state then holds those very tensors (so
        model.load_state_dict has nothing to copy). Everything else loads
        into fresh tensors."""
        if into is None:
            return self._result(self._c.load(), False)
        if not isinstance(into, dict):
            raise TypeError("load() into must be a dict, not %s" % type(into).__name__)
        return self._result(self._c.load_into(None, into, None), False)

    def load_index(self, index):
        """Exactly checkpoint `index` (ackpt.NotFoundError if there is none)."""
        return self._result(self._c.load_index(int(index)), False)

    def load_best(self, metric, mode_max=False):
        """The best checkpoint by a metric given to save()."""
        return self._result(self._c.load_best(metric, bool(mode_max)), False)

    def load_checkpoint(self, index=None):
        """Like load() / load_index(), always as a dict of the three groups
        (plus "metrics", "path", "layout"); None if there is none."""
        r = self._c.load() if index is None else self._c.load_index(int(index))
        return self._result(r, True)

    # ---- introspection --------------------------------------------------------
    def counters(self):
        """The C++ CheckpointerCounters as a dict."""
        return self._c.counters()

    def stats(self):
        """SaveStats of the most recent saves (up to 1024), oldest first, as dicts."""
        return self._c.stats()

    def list_checkpoints(self):
        """The checkpoints in save_dir, newest first, with the rules keeping each."""
        return self._c.list_checkpoints()

    @property
    def args(self):
        """The arguments in force, as a dict of keyword arguments."""
        return self._c.args()

    @property
    def last_saved_path(self):
        return self._c.last_saved_path()

    @property
    def last_loaded_path(self):
        return self._c.last_loaded_path()

    # ---- lifetime -----------------------------------------------------------
    @property
    def closed(self):
        return self._c.closed

    def close(self):
        """Waits until every save is durable (raising a background error), then
        stops the writer threads and releases save_dir. Idempotent."""
        with _LIVE_LOCK:
            _LIVE.discard(self)
        self._c.close()

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.close()
        else:
            try:
                self.close()
            except Error:
                pass  # the exception already propagating matters more
        return False

    def __repr__(self):
        if self.closed:
            return "<ackpt.Checkpointer (closed)>"
        return "<ackpt.Checkpointer save_dir=%r>" % self.args["save_dir"]


Checkpointer.__doc__ += _field_doc()
Checkpointer.__init__.__signature__ = inspect.Signature(
    [inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)]
    + [inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY, default=f["default"]) for n, f in FIELDS.items()])


def close_all():
    """Drains and closes every open Checkpointer (registered with atexit)."""
    with _LIVE_LOCK:
        live = list(_LIVE)
    for c in live:
        try:
            c.close()
        except Exception as e:  # noqa: BLE001 - at exit, report and go on
            import sys
            print("ackpt: at exit: %s" % e, file=sys.stderr)


atexit.register(close_all)
