"""Tests of grpo_lab/cli.py through typer's runner (the same code path as the console script)."""

import re

from typer.testing import CliRunner

from grpo_lab import __version__
from grpo_lab.cli import _ratio_audit, app

runner = CliRunner()


def test_help_lists_commands():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for cmd in ("demo", "presets"):
        assert cmd in result.output


def test_version():
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert __version__ in result.output


def test_presets_table_names_every_preset():
    result = runner.invoke(app, ["presets"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    for name in ("grpo", "dr_grpo", "dapo", "gspo", "ppo", "seq-mean-token-sum-norm", "0.28"):
        assert name in result.output


def test_demo_runs_and_reports_the_ratio_audit():
    result = runner.invoke(app, ["demo", "--seed", "0"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "group advantages" in result.output
    m = re.search(r"max r = ([0-9.]+), min r = ([0-9.]+)", result.output)
    assert m is not None
    # the printed figures are the audit's own: recompute them independently of the printing
    r_max, r_min = _ratio_audit(0.2, 0.1, 20, 0)
    assert float(m.group(1)) == round(r_max, 3) and float(m.group(2)) == round(r_min, 3)
    verdict = "holds" if 0.8 <= r_min and r_max <= 1.2 else "is violated"
    assert verdict in result.output


def test_unknown_command_exits_2():
    result = runner.invoke(app, ["frobnicate"])
    assert result.exit_code == 2
