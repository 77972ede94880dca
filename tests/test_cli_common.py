"""Shared command-line pieces (cxr.cli._common) and the parser as a whole."""

from __future__ import annotations

import pytest

from cxr.cli import build_parser, main
from cxr.cli._common import CLIError, parse_list


def test_parse_list():
    assert parse_list(" a, b ,c,", "--labels") == ["a", "b", "c"]
    assert parse_list(None, "--labels") is None
    with pytest.raises(CLIError, match="--labels needs one or more"):
        parse_list(" , ", "--labels")


def test_every_command_is_registered():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert list(sub.choices) == [
        "data",
        "prepare",
        "synth",
        "demo",
        "train",
        "tune",
        "evaluate",
        "compare",
        "calibrate",
        "gate",
        "predict",
        "localize",
        "export",
        "sign",
        "serve",
        "dicom",
    ]


def test_messages_name_flags_and_files(tmp_path, capsys):
    csv = tmp_path / "a.csv"
    csv.write_text("Image,Effusion\nx.png,1\n")
    assert main(["data", "check-leakage", str(csv), str(csv)]) == 2
    err = capsys.readouterr().err
    assert f"{csv} is given more than once" in err and "find_leakage" not in err
    assert main(["data", "inspect", str(csv), "--uncertain", "zeros"]) == 2
    err = capsys.readouterr().err
    assert "--uncertain" in err and "uncertain=" not in err
