"""The ``samlung`` command: dispatches to one module of :mod:`napari_samlung.commands` per command.

Each command module has ``DESCRIPTION``, ``add_arguments(parser)`` and ``run(args) -> int``; only
the chosen command's module is imported (``samlung --help`` loads no torch). Errors the user can
fix (:func:`napari_samlung.errors.user_error`) print one line naming the option or file and exit
with status 2; any other exception is a bug and keeps its traceback.

SIGTERM (``kill``, a batch scheduler, torchrun stopping its workers) is raised as
:class:`Terminated`, a ``KeyboardInterrupt``, so it stops a command the way Ctrl-C does: finished
work is kept, one line says what (the command adds it as a note to the exception), and the exit
status is the shells' 128 + signal number: 130 for Ctrl-C, 143 for SIGTERM.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import signal
import sys
from typing import Iterator, Sequence

from napari_samlung.commands.wording import report_user_error

EXIT_USAGE = 2
EXIT_INTERRUPTED = 128 + signal.SIGINT
EXIT_TERMINATED = 128 + signal.SIGTERM

#: name -> (module, the one line ``samlung --help`` shows for it).
COMMANDS = {
    "segment": ("napari_samlung.commands.segment",
                "segment whole slides (or a region) into class maps, label TIFF and GeoJSON"),
    "predict": ("napari_samlung.commands.predict",
                "evaluate a checkpoint on image tiles: Dice, IoU, accuracy, HD95 per image"),
    "export": ("napari_samlung.commands.export",
               "export a slide's results: training set of reviewed regions, GeoJSON, label TIFF"),
    "import": ("napari_samlung.commands.import_",
               "import QuPath GeoJSON or a label image into a slide's results as reviewed regions"),
    "suggest": ("napari_samlung.commands.suggest",
                "list the fields to review next: where the model was least confident"),
    "summary": ("napari_samlung.commands.summary",
                "tumour burden of slides from their results: one line each, and a CSV table"),
    "demo": ("napari_samlung.commands.demo",
             "run the whole loop on a built-in synthetic slide (CPU, a few minutes)"),
}


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived: the command stops as on Ctrl-C, keeping what it finished."""


class _Parser(argparse.ArgumentParser):
    """Usage mistakes print one line (``samlung segment: error: ...``) and exit 2."""

    def error(self, message: str) -> None:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The ``samlung`` parser. With ``command``, only that command's module is imported and its
    options filled in; with None, every command's."""
    parser = _Parser(prog="samlung", description="SAM-Lung tumor segmentation for whole-slide H&E images.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)
    for name, (module_name, help_text) in COMMANDS.items():
        if command not in (None, name):
            sub.add_parser(name, help=help_text)
            continue
        module = importlib.import_module(module_name)
        p = sub.add_parser(name, help=help_text, description=module.DESCRIPTION)
        module.add_arguments(p)
        p.set_defaults(run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``samlung`` with ``argv`` (default: the process's arguments); returns the exit status."""
    logging.getLogger("tifffile").setLevel(logging.CRITICAL)  # its messages repeat what our errors say
    argv = sys.argv[1:] if argv is None else list(argv)
    command = next((a for a in argv if not a.startswith("-")), "")  # "" (no command): fill in none
    args = build_parser(command).parse_args(argv)
    try:
        with _sigterm_as_interrupt():
            return args.run(args)
    except KeyboardInterrupt as stop:
        print(interrupted_line(args.command, stop), file=sys.stderr)
        return EXIT_TERMINATED if isinstance(stop, Terminated) else EXIT_INTERRUPTED
    except Exception as exc:
        if not report_user_error(args.command, exc):
            raise
        return EXIT_USAGE


def interrupted_line(command: str, stop: KeyboardInterrupt) -> str:
    """The one line for a stop: how it came, then what the command kept (its notes)."""
    how = "stopped by SIGTERM" if isinstance(stop, Terminated) else "interrupted"
    return "; ".join([f"samlung {command}: {how}", *getattr(stop, "__notes__", [])])


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM raises :class:`Terminated` in the main thread."""
    def terminate(signum: int, frame) -> None:
        raise Terminated

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
