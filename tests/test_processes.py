"""A function run in its own interpreter gives back its result, or its exception as raised there."""

from __future__ import annotations

import os

import pytest

from napari_samlung.errors import SamLungError
from napari_samlung.processes import run_apart


def child_pid_and(value: int, *, plus: int) -> tuple[int, int]:
    return os.getpid(), value + plus


def refuse(what: str) -> None:
    raise SamLungError(f"{what}: refused", param="geojson")


def die() -> None:
    os._exit(7)


def test_the_result_comes_back_from_another_process():
    pid, value = run_apart(child_pid_and, 40, plus=2)
    assert value == 42 and pid != os.getpid()


def test_a_user_error_comes_back_with_its_type_parameter_and_the_childs_traceback():
    with pytest.raises(SamLungError, match="x.geojson: refused") as raised:
        run_apart(refuse, "x.geojson")
    assert raised.value.param == "geojson"
    assert "In the child process" in raised.value.__notes__[0] and "refuse" in raised.value.__notes__[0]


def test_a_child_that_dies_without_a_result_is_an_error_naming_its_exit_code():
    with pytest.raises(RuntimeError, match="exit code 7"):
        run_apart(die)
