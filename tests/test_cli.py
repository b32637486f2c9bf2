"""The CLI lists every verb with real help, and unfinished verbs say so and fail."""

from __future__ import annotations

import subprocess
import sys

import pytest

from boneage import cli

VERBS = ("synth", "segment", "predict", "train", "compare", "reference", "app")


def test_help_lists_every_verb(capsys):
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    for verb in VERBS:
        assert verb in out


@pytest.mark.parametrize("verb", VERBS)
def test_each_verb_has_help(capsys, verb):
    assert cli.main([verb, "--help"]) == 0
    assert len(capsys.readouterr().out.splitlines()) > 3


def test_usage_error_exits_2(capsys):
    assert cli.main(["no-such-verb"]) == 2
    assert cli.main(["reference", "sds", "--bone-age", "x"]) == 2


def test_reference_sds_verb(capsys):
    assert cli.main(["reference", "sds", "--bone-age", "130", "--age", "120", "--sex", "M"]) == 0
    assert capsys.readouterr().out.strip() == "+1.02"
    assert cli.main(["reference", "sds", "--bone-age", "130", "--age", "250", "--sex", "M"]) == 2
    assert "outside the Brush SD table" in capsys.readouterr().err


def test_console_script_is_installed():
    result = subprocess.run([sys.executable, "-m", "boneage.cli", "--version"], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.startswith("boneage ")


def test_unfinished_feature_handler_says_so_and_fails(capsys):
    import argparse

    handler = cli._not_landed("a future feature", "issue: later")
    assert handler(argparse.Namespace(verb="demo")) == cli.EXIT_NOT_AVAILABLE
    assert "not available in this version" in capsys.readouterr().err


def test_compare_refuses_an_unreadable_file_of_runs_to_reuse_before_any_work(tmp_path, capsys):
    bad = tmp_path / "results.json"
    bad.write_text("{not json")
    args = ["compare", "--no-real", "--synthetic-sizes", "40", "--out", str(tmp_path / "out"), "--reuse-direct"]
    assert cli.main([*args, str(bad)]) == cli.EXIT_USAGE
    assert f"{bad}: not a readable comparison_results.json" in capsys.readouterr().err
    assert cli.main([*args, str(tmp_path / "missing.json")]) == cli.EXIT_USAGE
    assert "missing.json: not a readable" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
