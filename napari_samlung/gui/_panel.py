"""The contract between the dock widget and its panels.

A panel (segment, review, export, fine-tune) is a group box of controls built with the widget as
its :class:`Host`. It uses the widget only through ``Host`` and shares choices with the other
panels only through ``Host.state`` (:class:`~napari_samlung.gui.state.WidgetState`), never
through another panel's attributes. The widget uses of every panel what :class:`Panel` states,
and besides calls the fine-tune panel's own ``running`` / ``cancel`` (its process runs beside the
widget's one job).

A panel's status line says the outcome of its last action (done, failed: why, cancelled): a job's
failure reaches it through ``on_error`` (of ``start_job`` or ``user_errors``), and
``Panel.slide_changed`` clears it when the current slide changes.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Iterator, Mapping, Protocol, runtime_checkable

if TYPE_CHECKING:
    import napari

    from napari_samlung.gui._common import Job
    from napari_samlung.gui._viewer import SlideContext
    from napari_samlung.gui.model_cache import PredictorCache
    from napari_samlung.gui.state import WidgetState
    from napari_samlung.results.classmap import ClassMap
    from napari_samlung.slide import Slide


@runtime_checkable
class Host(Protocol):
    """What a panel may use from the widget."""

    viewer: napari.viewer.Viewer
    state: WidgetState  # shared choices; a panel that shows a field follows state.events.<field>
    models: PredictorCache  # loaded models, shared by the panels' jobs

    def current_slide(self) -> SlideContext:
        """The slide the buttons act on; UserError when none is open."""

    def slide_for(self, slide: SlideContext) -> Slide:
        """The slide opened for reading tiles (one per file), with the microns per pixel the user
        entered for it, if any."""

    def set_slide_mpp(self, slide: SlideContext, mpp: float | None) -> None:
        """Use ``mpp`` as the slide's microns per pixel (None: the file's), kept with its results."""

    def classmap(self, slide: SlideContext, writable: bool = False) -> ClassMap:
        """The slide's class map; UserError when it has none yet."""

    def results_written(self, slide: SlideContext, root: Path) -> None:
        """A running job wrote into the results in ``root``: show its class map, redraw it soon."""

    def show_results(self, slide: SlideContext, source: ClassMap | Path) -> Iterator[None]:
        """A job has finished writing the results ``source`` (an opened class map or its folder):
        show them, a step per turn of the event loop (``yield from`` it in a job's ``on_done``)."""

    def start_job(self, function: Callable, *args: Any, description: str,
                  on_yield: Callable[[Any], None] | None = None,
                  on_done: Callable[[Any], None] | None = None,
                  on_error: Callable[[Exception], None] | None = None) -> Job | None:
        """Run the widget's one job (a second is refused with a message); a failure is reported,
        then given to ``on_error``."""

    def cancel_job(self) -> None:
        """Ask the running job to stop."""

    def user_errors(self, on_error: Callable[[Exception], None] | None = None) -> AbstractContextManager[None]:
        """Report an error raised inside (one line for a user error), give it to ``on_error``, go on."""

    def field_label(self, param: str) -> str:
        """The label of the widget's field that sets the engine parameter ``param``."""


@runtime_checkable
class Panel(Protocol):
    """What the widget uses of every panel."""

    FIELDS: ClassVar[Mapping[str, str]]  # its fields' labels by engine parameter, for error messages

    def slide_changed(self) -> None:
        """The current slide changed (or none is open now): clear the status of the last action and
        show what belongs to the new slide."""
