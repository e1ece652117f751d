"""Run a function in a fresh Python interpreter and get its result (or exception) back.

Why: long C calls (contour tracing in the GeoJSON export) hold Python's interpreter lock in a
worker thread, and napari cannot draw while they run; another interpreter has its own lock. A
plain ``python -c`` child, not ``multiprocessing``: its spawn start re-runs the parent's main
script, which for a script that opens napari without a ``__main__`` guard would open it again.
"""

from __future__ import annotations

import pickle
import subprocess
import sys
import tempfile
import traceback
from pathlib import Path
from typing import Any, Callable

_SERVE = "from napari_samlung.processes import serve; serve()"


def run_apart(function: Callable, *args: Any, **kwargs: Any) -> Any:
    """``function(*args, **kwargs)`` in a new interpreter (with this one's ``sys.path``): its result,
    or its exception raised here with the child's traceback as a note. ``function``, the arguments
    and the result must pickle; the function's module should not import napari (the child would)."""
    with tempfile.TemporaryDirectory(prefix="samlung-apart-") as folder:
        request, reply = Path(folder) / "request.pickle", Path(folder) / "reply.pickle"
        with request.open("wb") as f:
            pickle.dump(list(sys.path), f)  # first, so the child can import what the call names
            pickle.dump((function, args, kwargs), f)
        child = subprocess.run([sys.executable, "-c", _SERVE, str(request), str(reply)],
                               stdin=subprocess.DEVNULL, capture_output=True, text=True)
        if not reply.is_file():
            raise RuntimeError(f"{getattr(function, '__qualname__', function)} ended in its own process with exit "
                               f"code {child.returncode} and no result: {child.stderr.strip()[-800:]}")
        with reply.open("rb") as f:
            done, value = pickle.load(f)  # written by our own child, in our own temporary folder
    if done:
        return value
    raise value


def serve() -> None:
    """The child's side: run the request in ``argv[1]``, pickle ``(done, result or exception)`` to ``argv[2]``."""
    request, reply = Path(sys.argv[1]), Path(sys.argv[2])
    with request.open("rb") as f:
        sys.path[:] = pickle.load(f)
        function, args, kwargs = pickle.load(f)
    try:
        outcome = (True, function(*args, **kwargs))
    except Exception as exc:  # sent back whole: the caller tells a user's error from a bug
        exc.add_note("In the child process:\n" + "".join(traceback.format_exception(exc)))
        outcome = (False, exc)
    with reply.open("wb") as f:
        pickle.dump(outcome, f)
