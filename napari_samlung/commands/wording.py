"""How the ``samlung`` commands word what they report: parameters as options, errors, notes.

Engine errors and notes name parameters (``tile_size``, ``results_folder``); the command line
says them as its options (``--tile-size``, ``-o/--output``). Imports no torch, so ``samlung
--help`` stays quick.
"""

from __future__ import annotations

import sys

from napari_samlung.errors import SamLungError, flag_name, user_error, word

#: Engine parameters whose option is not spelled after them.
ALIASES = {"results_folder": "-o/--output"}


def option_name(param: str) -> str:
    """The option that sets an engine parameter: ``tile_size`` -> ``--tile-size``."""
    return ALIASES.get(param) or flag_name(param)


def error_line(command: str, error: SamLungError) -> str:
    """The one line a command prints for a user error."""
    return f"samlung {command}: error: {error.worded(option_name)}"


def report_user_error(command: str, exc: Exception) -> bool:
    """Print ``exc`` in one line if it is a user error and say so; False for a bug (keep its traceback)."""
    error = user_error(exc)
    if error is not None:
        print(error_line(command, error), file=sys.stderr, flush=True)
    return error is not None


def note(command: str, text: str) -> None:
    """Print a note (an engine note may name parameters) on stderr."""
    print(f"samlung {command}: note: {word(text, option_name)}", file=sys.stderr)
