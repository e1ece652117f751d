"""`samlung` says user errors in one line (exit 2) and lets bugs keep their tracebacks."""

from __future__ import annotations

import pytest

from napari_samlung.cli import Terminated, main
from napari_samlung.commands import export
from napari_samlung.errors import SamLungError
from napari_samlung.inference.predictor import resolve_device


def one_line(capsys) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


def test_a_user_error_is_one_line_naming_the_flag_and_exits_2(monkeypatch, capsys):
    def refuse(args):
        raise SamLungError("must be a multiple of 16", param="tile_size")

    monkeypatch.setattr(export, "run", refuse)
    assert main(["export", "somewhere"]) == 2
    assert one_line(capsys) == "samlung export: error: --tile-size: must be a multiple of 16"


def test_an_os_error_naming_a_file_is_a_user_error(monkeypatch, capsys):
    def denied(args):
        raise PermissionError(13, "Permission denied", "/out/locked")

    monkeypatch.setattr(export, "run", denied)
    assert main(["export", "somewhere"]) == 2
    assert one_line(capsys) == "samlung export: error: /out/locked: Permission denied"


@pytest.mark.parametrize("bug", [ZeroDivisionError("division by zero"), ValueError("a bare ValueError")])
def test_a_bug_is_not_swallowed_into_a_one_liner(monkeypatch, capsys, bug):
    def broken(args):
        raise bug

    monkeypatch.setattr(export, "run", broken)
    with pytest.raises(type(bug)) as raised:
        main(["export", "somewhere"])
    assert raised.value is bug
    assert "error:" not in capsys.readouterr().err


def test_an_interrupt_is_one_line_and_exits_130(monkeypatch, capsys):
    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(export, "run", interrupted)
    assert main(["export", "somewhere"]) == 130
    assert one_line(capsys) == "samlung export: interrupted"


def test_an_unknown_device_is_one_line_and_exits_2(tmp_path, capsys):
    slide = tmp_path / "case.svs"
    slide.write_bytes(b"not read: the device is refused first")
    assert main(["segment", str(slide), "--preset", "tiny", "--device", "banana"]) == 2
    line = one_line(capsys)
    assert line.startswith("samlung segment: error: --device: banana")
    with pytest.raises(SamLungError) as raised:
        resolve_device("banana")
    assert raised.value.param == "device"


def test_the_results_folder_is_worded_as_the_option_that_sets_it(monkeypatch, capsys):
    def refuse(args):
        raise SamLungError("/x: no such folder", param="results_folder")

    monkeypatch.setattr(export, "run", refuse)
    assert main(["export", "somewhere"]) == 2
    assert one_line(capsys) == "samlung export: error: -o/--output: /x: no such folder"


def test_sigterm_is_one_line_with_what_was_kept_and_exits_143(monkeypatch, capsys):
    def terminated(args):
        stop = Terminated()
        stop.add_note("case.svs: 3 of 9 tiles are done and kept in /r; rerun the same command to resume")
        raise stop

    monkeypatch.setattr(export, "run", terminated)
    assert main(["export", "somewhere"]) == 143
    assert one_line(capsys) == ("samlung export: stopped by SIGTERM; case.svs: 3 of 9 tiles are done and kept in /r; "
                                "rerun the same command to resume")
