"""pymarlin's checkpointer contract on ackpt's engine.

    from ackpt.pymarlin import AsyncCheckpointer, Checkpoint, DefaultCheckpointerArguments
    checkpointer = AsyncCheckpointer(DefaultCheckpointerArguments(save_dir="ckpt"))
    trainer = Trainer(..., checkpointer=checkpointer)   # a pymarlin-shaped Trainer

`AsyncCheckpointer` implements pymarlin's AbstractCheckpointer:
``save(checkpoint_state: Checkpoint, index: int, force=False)``,
``save_model(model_state, index)`` and ``load() -> Checkpoint``. save()
returns after the snapshot copy; the file is written in the background.
"""
import dataclasses
from dataclasses import dataclass, field
from typing import Any, Dict

from . import FIELDS, Checkpointer

__all__ = ["Checkpoint", "DefaultCheckpointerArguments", "AbstractCheckpointer", "AsyncCheckpointer"]


@dataclass
class Checkpoint:
    """pymarlin's Checkpoint: the three state groups (ackpt::Checkpoint)."""
    module_interface_state: dict = field(default_factory=dict)
    trainer_state: dict = field(default_factory=dict)
    trainer_backend_state: dict = field(default_factory=dict)


_PYMARLIN = ("checkpoint", "delete_existing_checkpoints", "period", "save_dir", "model_state_save_dir",
             "file_prefix", "file_ext", "log_level", "load_dir", "load_filename")


def _make_arguments():
    # pymarlin's field names first (their defaults are ackpt's, read off the
    # C++ struct), then ackpt's own: one field per Checkpointer keyword.
    names = list(_PYMARLIN) + [n for n in FIELDS if n not in _PYMARLIN]
    fields = []
    for n in names:
        d = FIELDS[n]["default"]
        if isinstance(d, (dict, list)):
            fields.append((n, Any, field(default_factory=lambda d=d: type(d)(d))))
        else:
            fields.append((n, Any, field(default=d)))
    cls = dataclasses.make_dataclass("DefaultCheckpointerArguments", fields)
    cls.__module__ = __name__
    cls.__doc__ = ("pymarlin's DefaultCheckpointerArguments plus ackpt's own fields; every field is a "
                   "keyword argument of ackpt.Checkpointer (see help(ackpt.Checkpointer)).")
    return cls


DefaultCheckpointerArguments = _make_arguments()


class AbstractCheckpointer:
    """pymarlin's AbstractCheckpointer."""

    def save(self, checkpoint_state: Checkpoint, index: int, force: bool = False) -> None:
        raise NotImplementedError

    def save_model(self, model_state: Dict, index: int) -> None:
        pass

    def load(self) -> Checkpoint:
        raise NotImplementedError


class AsyncCheckpointer(AbstractCheckpointer):
    """pymarlin's DefaultCheckpointer behaviour on ackpt's asynchronous engine."""

    def __init__(self, args=None):
        self.args = args if args is not None else DefaultCheckpointerArguments()
        self._c = Checkpointer(**dataclasses.asdict(self.args))

    def save(self, checkpoint_state: Checkpoint, index: int, force: bool = False, metrics=None) -> None:
        self._c.save_checkpoint(checkpoint_state.module_interface_state, checkpoint_state.trainer_state,
                                checkpoint_state.trainer_backend_state, index, force, metrics)

    def save_model(self, model_state: Dict, index: int) -> None:
        self._c.save_model(model_state, index)

    def load(self, into: Checkpoint = None) -> Checkpoint:
        """pymarlin's load(); `into` (optional): tensors to read into in place."""
        if into is not None:
            r = self._c._result(self._c._c.load_into(into.module_interface_state, into.trainer_state,
                                                     into.trainer_backend_state), True)
        else:
            r = self._c.load_checkpoint()
        if r is None:
            return Checkpoint()
        return Checkpoint(r["module_interface_state"], r["trainer_state"], r["trainer_backend_state"])

    def wait(self) -> None:
        self._c.wait()

    def close(self) -> None:
        self._c.close()

    @property
    def checkpointer(self) -> Checkpointer:
        """The underlying ackpt.Checkpointer (counters(), stats(), list_checkpoints(), ...)."""
        return self._c
