"""Fixtures and helpers for the napari plugin tests (``tests/test_gui_*.py``).

Import the fixtures into a test module (``from gui_support import ...``); ``isolated_config`` is
autouse there, so no test ever reads or writes a person's real settings or cache. ``tiny_checkpoint``
is in conftest.py (the headless fine-tuning tests use it too).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from napari_samlung.gui.layers import ROLE
from napari_samlung.synthetic import write_demo_slide

PLUGIN = "napari-samlung"
WIDGET = "SAM-Lung segmentation"
SLIDE_SIDE = 1024  # small: the tiny model segments it in a few seconds on 2 CPU cores
JOB_TIMEOUT_MS = 120_000


@pytest.fixture(autouse=True)
def isolated_config(tmp_path, monkeypatch, request):
    """Settings, the sample-data cache and the bug log in the test's own folder; napari's messages
    from this test only; in GUI tests, napari's own settings (the reader preference the plugin sets)
    kept in memory, never saved."""
    from napari.utils.notifications import notification_manager

    monkeypatch.setenv("SAMLUNG_CONFIG_DIR", str(tmp_path / "config"))
    monkeypatch.setenv("SAMLUNG_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("SAMLUNG_LOG_DIR", str(tmp_path / "logs"))
    monkeypatch.setattr(notification_manager, "records", [])
    if request.node.get_closest_marker("gui"):
        from napari.settings._base import EventedConfigFileSettings

        monkeypatch.setattr(EventedConfigFileSettings, "_maybe_save", lambda self: None)
    return tmp_path / "config" / "settings.json"


@pytest.fixture(scope="session")
def demo_source(tmp_path_factory) -> Path:
    """A generated pyramidal SVS-like slide (1024 px, 0.5 µm/px, 3 levels)."""
    path = tmp_path_factory.mktemp("source") / "demo.svs"
    write_demo_slide(path, (SLIDE_SIDE, SLIDE_SIDE), mpp=0.5)
    return path


@pytest.fixture
def demo_slide(demo_source, tmp_path) -> Path:
    """A fresh copy of the demo slide: results are written beside it."""
    folder = tmp_path / "slides"
    folder.mkdir()
    return Path(shutil.copy(demo_source, folder / demo_source.name))


def notifications(severity: str) -> list[str]:
    """Messages napari has shown in this test with this severity ('error', 'warning', 'info')."""
    from napari.utils.notifications import notification_manager

    return [n.message for n in notification_manager.records if str(n.severity) == severity]


def open_slide_layer(viewer, path: Path):
    """Open ``path`` with this plugin's reader; returns the slide's image layer."""
    layers = viewer.open(str(path), plugin=PLUGIN)
    return layers[0]


def dock(viewer):
    """Dock the plugin's widget through its manifest, as the Plugins menu does."""
    _dock, widget = viewer.window.add_plugin_dock_widget(PLUGIN, WIDGET)
    return widget


def ready_widget(viewer, slide, checkpoint):
    """The slide open, the widget docked, ``checkpoint`` chosen; returns (slide layer, widget)."""
    layer = open_slide_layer(viewer, slide)
    widget = dock(viewer)
    widget.segment.checkpoint.set_text(str(checkpoint))
    return layer, widget


def layers_of(viewer, role):
    """The viewer's layers that this plugin made in ``role`` ('slide', 'classmap', 'draft', 'reviewed')."""
    return [layer for layer in viewer.layers if layer.metadata.get(ROLE) == role]


def wait_for(qtbot, widget) -> None:
    """Wait until the widget's segment/review/export job has finished (and its callbacks ran)."""
    qtbot.waitUntil(lambda: widget.job is None, timeout=JOB_TIMEOUT_MS)


def view(viewer, y: float, x: float, height: float) -> None:
    """Point the 2-D camera at world (y, x) so that ``height`` world units fill the canvas height."""
    camera = viewer.scene.camera
    camera.center = (y, x)
    camera.zoom = viewer.canvas.size[0] / height
