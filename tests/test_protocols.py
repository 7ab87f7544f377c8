"""Tests of grpo_lab/protocols.py: schema errors name the field path, grid expansion, and every
verdict rule on synthetic data where the answer is known both ways."""

import pytest

from grpo_lab.protocols import ProtocolError, expand, find_protocols, load_protocol

GOOD = """
name = "tiny"
claim = "a claim"
[env]
name = "bandit"
kwargs = { k = 3, seed = 0 }
[[algorithms]]
name = "grpo"
config = { loss = "dapo" }
[grid]
"loss.eps_low" = [0.1, 0.2]
seed = [0, 1, 2]
[budget.quick]
iterations = 2
[budget.full]
iterations = 10
[verdict]
rule = "ratio-bound"
"""


def _write(tmp_path, text, name="p.toml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_shipped_protocols_load_and_expand():
    found = find_protocols()
    assert {"ratio-bound", "trpo-bound", "surrogate-bound"} <= set(found)
    for path in found.values():
        p = load_protocol(path)
        assert p.claim and expand(p, "quick") and expand(p, "full")


def test_expand_is_the_grid_product_with_budget_and_overrides(tmp_path):
    p = load_protocol(_write(tmp_path, GOOD))
    runs = expand(p, "quick")
    assert len(runs) == 6
    assert {(r.config.loss.eps_low, r.config.seed) for r in runs} == {
        (e, s) for e in (0.1, 0.2) for s in (0, 1, 2)
    }
    assert all(r.config.iterations == 2 for r in runs)
    assert all(r.config.loss.eps_high == 0.28 for r in runs)  # the dapo preset's, not the grid's
    assert {r.config.iterations for r in expand(p, "full")} == {10}
    one = expand(p, "quick", {"seed": 7, "lr": 0.5})  # an axis override collapses the axis
    assert len(one) == 2 and {r.config.seed for r in one} == {7}
    assert {r.config.lr for r in one} == {0.5}


@pytest.mark.parametrize(
    "old, new, match",
    [
        ('name = "grpo"', 'name = "a2c"', r"algorithms\[0\]\.name: .*unknown algorithm 'a2c'"),
        ("seed = [0, 1, 2]", "seed = []", r"grid: .*grid axis 'seed' is empty"),
        ("iterations = 2", "iterations = 2\nlr = -0.1", r"algorithms\[0\]\.config\.lr: .*greater"),
        ('config = { loss = "dapo" }', 'config = { loss = "dapo", epoch = 2 }', r"\.config\.epoch"),
        ('claim = "a claim"', 'claim = "a claim"\nclaimm = "typo"', r"claimm: Extra inputs"),
        (
            '"loss.eps_low" = [0.1, 0.2]',
            '"loss.eps_lo" = [0.1]',
            r"grid\.loss\.eps_lo: grpo has no",
        ),
        ('"loss.eps_low" = [0.1, 0.2]', '"loss.eps_low" = [0.1, 1.5]', r"eps_low.*eps_low=1\.5"),
        ('name = "bandit"', 'name = "cartpole"', r"env\.name: .*unknown env 'cartpole'"),
        ('rule = "ratio-bound"', 'rule = "vibes"', r"verdict\.rule: .*unknown verdict rule"),
        ('name = "tiny"', 'name = "Tiny Protocol"', r"name: String should match pattern"),
    ],
)
def test_bad_protocols_are_rejected_with_the_field_path(tmp_path, old, new, match):
    assert old in GOOD
    with pytest.raises(ProtocolError, match=match):
        load_protocol(_write(tmp_path, GOOD.replace(old, new, 1)))


def test_unreadable_protocol_files(tmp_path):
    with pytest.raises(ProtocolError, match="does not exist"):
        load_protocol(tmp_path / "nope.toml")
    with pytest.raises(ProtocolError, match="not valid TOML"):
        load_protocol(_write(tmp_path, "name = [unclosed"))
    with pytest.raises(ProtocolError, match="unknown budget 'medium'"):
        expand(load_protocol(_write(tmp_path, GOOD)), "medium")


def test_zipped_axis_sets_both_fields(tmp_path):
    text = GOOD.replace('"loss.eps_low" = [0.1, 0.2]', '"loss.eps_low+loss.eps_high" = [0.1, 0.3]')
    runs = expand(load_protocol(_write(tmp_path, text)), "quick")
    assert {(r.config.loss.eps_low, r.config.loss.eps_high) for r in runs} == {
        (0.1, 0.1),
        (0.3, 0.3),
    }


# ----------------------------------------------------------------------------- check (item 13)
# Each fault used to crash only after the whole sweep had run; now load_protocol (and so
# `grpo-lab check` and `grpo-lab run`) rejects it before anything runs, naming the field path.

SWEEP = GOOD.replace(
    'rule = "ratio-bound"',
    'rule = "best-setting"\nparams = { axis = "cfg.loss.eps_low", claimed = 0.2 }',
).replace(
    'name = "bandit"\nkwargs = { k = 3, seed = 0 }', 'name = "gridworld"\nkwargs = { rows = 4 }'
)


@pytest.mark.parametrize(
    "old, new, match",
    [
        (  # a missing verdict param (was KeyError: 'axis' after the sweep)
            'params = { axis = "cfg.loss.eps_low", claimed = 0.2 }',
            "params = { claimed = 0.2 }",
            r"verdict\.params\.axis: rule 'best-setting' needs it; parameters: \[",
        ),
        (  # the axis spelled as in the grid
            'axis = "cfg.loss.eps_low"',
            'axis = "loss.eps_low"',
            r"verdict\.params\.axis: 'loss\.eps_low' is not a grid axis "
            r"\(did you mean 'cfg\.loss\.eps_low'\?\)",
        ),
        (  # an environment kwarg typo
            "kwargs = { rows = 4 }",
            "kwargs = { row = 4 }",
            r"env\.kwargs\.row: gridworld has no argument 'row' \(did you mean 'rows'\?\)",
        ),
        (  # a claimed value not on the grid
            "claimed = 0.2",
            "claimed = 0.25",
            r"verdict\.params\.claimed: 0\.25 is not on the grid of cfg\.loss\.eps_low: \[0\.1, 0\.2\]",
        ),
        (  # a misspelt parameter
            "claimed = 0.2 }",
            "claimed = 0.2, scroe = 'return' }",
            r"verdict\.params\.scroe: rule 'best-setting' has no parameter 'scroe' "
            r"\(did you mean 'score'\?\)",
        ),
        (  # a bad environment value: the environment is built once at check time
            "kwargs = { rows = 4 }",
            "kwargs = { rows = -4 }",
            r"env\.kwargs: gridworld: ",
        ),
    ],
)
def test_check_rejects_what_used_to_crash_after_the_sweep(tmp_path, old, new, match):
    assert old in SWEEP
    load_protocol(_write(tmp_path, SWEEP, "ok.toml"))  # the unchanged file is fine
    with pytest.raises(ProtocolError, match=match):
        load_protocol(_write(tmp_path, SWEEP.replace(old, new, 1)))


def test_check_reports_every_error_at_once_and_labels(tmp_path):
    text = SWEEP.replace("kwargs = { rows = 4 }", "kwargs = { row = 4 }").replace(
        'axis = "cfg.loss.eps_low", claimed = 0.2', 'axis = "loss.eps_low", claimed = 0.2'
    )
    with pytest.raises(ProtocolError) as e:
        load_protocol(_write(tmp_path, text))
    msg = str(e.value)
    assert msg.startswith("p.toml: 2 errors:") and "env.kwargs.row" in msg
    assert "verdict.params.axis" in msg
    labels = GOOD.replace(
        'rule = "ratio-bound"', 'rule = "improvement"\nparams = { better = "grpo", worse = "ppo" }'
    )
    with pytest.raises(ProtocolError, match=r"verdict\.params\.worse: 'ppo' is not an algorithm"):
        load_protocol(_write(tmp_path, labels))


def test_cli_check_exits_2_before_anything_runs(tmp_path):
    from typer.testing import CliRunner

    from grpo_lab.cli import app

    bad = _write(tmp_path, SWEEP.replace("claimed = 0.2", "claimed = 0.25"))
    res = CliRunner().invoke(app, ["check", str(bad)])
    assert res.exit_code == 2 and "verdict.params.claimed" in res.output
    res = CliRunner().invoke(app, ["run", str(bad), "--out", str(tmp_path / "out")])
    assert res.exit_code == 2 and not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "old, new, match",
    [
        (
            "tune_seeds = [100, 101]",
            "tune_seeds = [0, 100]",
            r"tune_seeds: \[0\] are also evaluation",
        ),
        ("tune_seeds = [100, 101]", "", r"tune_seeds: algorithms with a tune table need"),
        (
            "tune = { lr = [0.01, 0.5] }",
            'tune = { "loss.eps_low" = [0.1, 0.2] }',
            r"tune: \['loss\.eps_low'\] are grid axes",
        ),
        (
            "tune = { lr = [0.01, 0.5] }",
            "tune = { lrr = [0.01] }",
            r"grpo has no config field 'lrr'",
        ),
    ],
)
def test_tuning_needs_fresh_seeds_and_its_own_axes(tmp_path, old, new, match):
    text = GOOD.replace('claim = "a claim"', 'claim = "a claim"\ntune_seeds = [100, 101]').replace(
        'config = { loss = "dapo" }', 'config = { loss = "dapo" }\ntune = { lr = [0.01, 0.5] }'
    )
    p = load_protocol(_write(tmp_path, text, "ok.toml"))
    assert len(expand(p, "quick")) == 6  # the first tune value until tuning chose one
    assert {r.config.lr for r in expand(p, "quick", tuned={"grpo": {"lr": 0.5}})} == {0.5}
    with pytest.raises(ProtocolError, match=match):
        load_protocol(_write(tmp_path, text.replace(old, new, 1)))


def test_env_axis_varies_the_environment_not_the_config(tmp_path):
    text = GOOD.replace("seed = [0, 1, 2]", 'seed = [0, 1, 2]\n"env.kwargs.seed" = [3, 4]')
    runs = expand(load_protocol(_write(tmp_path, text)), "quick")
    assert len(runs) == 12 and {r.env.kwargs["seed"] for r in runs} == {3, 4}
    assert all(r.env.kwargs["k"] == 3 for r in runs)
    bad = GOOD.replace("seed = [0, 1, 2]", 'seed = [0, 1, 2]\n"env.kwargs.kk" = [3]')
    with pytest.raises(ProtocolError, match=r"env\.kwargs\.kk: bandit has no argument 'kk'"):
        load_protocol(_write(tmp_path, bad))
