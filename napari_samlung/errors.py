"""The one root of every error a user can cause: a bad file, option, field or checkpoint.

Front ends (the ``samlung`` commands, the widget) catch :class:`SamLungError` only and show its
one-line message; anything else is a bug and keeps its traceback. An error about a parameter
names it in :attr:`SamLungError.param` (the engine's name, such as ``"mpp"``), and a message that
suggests another parameter writes it as ``{opt:overwrite}``: the wording is the front end's, the
command line says ``--mpp``, the widget its field's label (:meth:`SamLungError.worded`).
``str(error)`` is the command-line wording.

An ``OSError`` that names a file (permission denied, disk full, no such folder) is the user's
environment, not a bug: :func:`user_error` turns it into a :class:`FileAccessError`.
"""

from __future__ import annotations

import re
from typing import Callable

_OPTION = re.compile(r"\{opt:([a-z_]+)\}")


class SamLungError(ValueError):
    """An error the user can fix; the message names the file or parameter and what is wrong.

    It derives from ``ValueError`` because every such error is a bad value given to the program.
    """

    def __init__(self, message: str, *, param: str | None = None) -> None:
        self.message = message
        self.param = param
        super().__init__(self.worded(flag_name))

    def worded(self, name: Callable[[str], str]) -> str:
        """The message in a front end's words: ``name(param)`` for every parameter it mentions."""
        text = word(self.message, name)
        return f"{name(self.param)}: {text}" if self.param else text


class FileAccessError(SamLungError):
    """A file or folder the program could not read or write (permissions, space, missing folder)."""


def word(text: str, name: Callable[[str], str]) -> str:
    """``text`` with each ``{opt:param}`` written as ``name(param)`` (also for notes and warnings)."""
    return _OPTION.sub(lambda m: name(m.group(1)), text)


def user_error(exc: BaseException) -> SamLungError | None:
    """The user-fixable error that ``exc`` is, or None when it is a bug (keep its traceback)."""
    if isinstance(exc, SamLungError):
        return exc
    if isinstance(exc, OSError) and exc.filename is not None:
        return FileAccessError(f"{exc.filename}: {exc.strerror or exc}")
    return None


def flag_name(param: str) -> str:
    """The command-line spelling of an engine parameter: ``tile_size`` -> ``--tile-size``."""
    return "--" + param.replace("_", "-")
