"""ackpt's exception classes: one per ackpt::Error::Code (include/ackpt/error.h)."""
import re

__all__ = ["Error", "InvalidArgumentError", "IOError", "CorruptionError", "NotFoundError",
           "UnsupportedError", "TimedOutError", "BusyError"]


class Error(Exception):
    """Base of every error ackpt raises.

    Attributes: ``code`` (the ackpt::Error::Code name, e.g. ``"kIOError"``),
    ``message`` (without the ``ackpt: <code>: `` prefix), ``index`` (the
    checkpoint index of a failed background save, else None), ``path`` (the
    file the error names, else None) and ``key_path`` (for a value that cannot
    be saved: where it is in the state, e.g. ``state['optimizer']['state'][0]['foo']``).
    """

    code = None

    def __init__(self, what, message=None, index=None, path=None, key_path=None):
        super().__init__(what)
        self.message = message if message is not None else what
        self.index = index
        self.path = path
        self.key_path = key_path


class InvalidArgumentError(Error, ValueError):
    code = "kInvalidArgument"


class IOError(Error, OSError):  # noqa: A001 - ackpt.IOError, not the builtin alias
    code = "kIOError"

    def __init__(self, what, *args, **kwargs):
        Error.__init__(self, what, *args, **kwargs)
        self.args = (what,)

    def __str__(self):
        return self.args[0]


class CorruptionError(Error):
    code = "kCorruption"


class NotFoundError(Error, LookupError):
    code = "kNotFound"


class UnsupportedError(Error, TypeError):
    code = "kUnsupported"


class TimedOutError(Error, TimeoutError):
    code = "kTimedOut"

    def __init__(self, what, *args, **kwargs):
        Error.__init__(self, what, *args, **kwargs)
        self.args = (what,)

    def __str__(self):
        return self.args[0]


class BusyError(Error):
    code = "kBusy"


_BY_CODE = [InvalidArgumentError, IOError, CorruptionError, NotFoundError, UnsupportedError,
            TimedOutError, BusyError]  # in the order of ackpt::Error::Code

_INDEX = re.compile(r"save of index (-?\d+) to '([^']*)'")
_PATH = re.compile(r"'(/[^']*)'")


def _make(code, code_name, what, message, key_path):
    cls = _BY_CODE[code] if 0 <= code < len(_BY_CODE) else Error
    index = path = None
    m = _INDEX.search(message)
    if m:
        index, path = int(m.group(1)), m.group(2)
    else:
        m = _PATH.search(message)
        if m:
            path = m.group(1)
    return cls(what, message, index=index, path=path, key_path=key_path or None)


for _cls in [Error] + _BY_CODE:
    _cls.__module__ = "ackpt"
