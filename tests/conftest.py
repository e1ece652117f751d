"""Shared test fixtures: the real data in ../shared/fixtures (skipped with a reason where absent) and a
tiny checkpoint.

Nothing here imports napari or Qt: every test module, headless ones included, loads this file.
"""

from __future__ import annotations

from pathlib import Path

import pytest

SHARED_FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures"


def _shared(relative: str) -> Path:
    path = SHARED_FIXTURES / relative
    if not path.exists():
        pytest.skip(f"real test data not found at {path} (CI provides ../shared beside the clone)")
    return path


@pytest.fixture(scope="session")
def real_svs() -> Path:
    """A real Aperio SVS (CMU-1 small region, JPEG tiles, MPP in its description)."""
    return _shared("cmu-1-small-region.svs")


@pytest.fixture(scope="session")
def ocdc_dir() -> Path:
    """Ten real 640x640 H&E tiles (``images/``) with tumor masks (``masks/``, JPEG, threshold > 127)."""
    return _shared("ocdc")


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """A self-contained checkpoint of the tiny preset (256 px tiles, 0.5 µm/px, one class), seed 0."""
    import torch

    from napari_samlung.model import SamLung, SamLungConfig
    from napari_samlung.model.checkpoint import save_checkpoint

    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = SamLung(SamLungConfig.tiny(num_classes=1))
    path = tmp_path_factory.mktemp("model") / "tiny.pt"
    save_checkpoint(model, path, include_encoder=True)
    return path
