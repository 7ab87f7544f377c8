"""Tests of grpo_lab/sweep.py: resume, batching invariance, failure isolation, a SIGKILL'd sweep
restarted, and the CLI around it."""

import json
import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest
from conftest import TINY
from typer.testing import CliRunner

from grpo_lab import store
from grpo_lab.algorithms import ALGORITHMS, Algorithm
from grpo_lab.cli import app
from grpo_lab.protocols import load_protocol
from grpo_lab.sweep import run_protocol


@pytest.fixture
def tiny(tmp_path):
    path = tmp_path / "tiny.toml"
    path.write_text(TINY)
    return path


def _steps(path):
    df = store.load_results(path, "steps")
    cols = ["run_id", "step", "loss", "exact_ratio_max", "kl_mean"]
    return df[cols].sort_values(["run_id", "step"]).reset_index(drop=True)


def test_sweep_runs_stores_judges_and_resumes(tiny, tmp_path):
    p = load_protocol(tiny)
    out = tmp_path / "out"
    first = run_protocol(p, out, progress=False)
    assert (first.ran, first.skipped) == (6, 0)
    assert first.verdict.status in ("holds", "violated")
    assert (
        json.loads((first.sweep_path / "verdict.json").read_text())["status"]
        == first.verdict.status
    )
    summary = store.load_results(first.sweep_path, "summary")
    assert len(summary) == 6 and set(summary["status"]) == {"ok"}
    again = run_protocol(p, out, progress=False)
    assert (again.ran, again.skipped) == (0, 6)  # nothing repeated
    assert again.verdict.summary == first.verdict.summary


def test_batch_composition_does_not_change_the_numbers(tiny, tmp_path):
    p = load_protocol(tiny)
    a = run_protocol(p, tmp_path / "a", batch_size=6, progress=False)
    b = run_protocol(p, tmp_path / "b", batch_size=1, progress=False)
    pd.testing.assert_frame_equal(_steps(a.sweep_path), _steps(b.sweep_path))


def test_a_raising_run_is_recorded_and_the_sweep_completes(tiny, tmp_path, monkeypatch):
    real = ALGORITHMS.get("grpo")

    def train(mdp, configs):
        if any(c.seed == 1 for c in configs):
            raise RuntimeError("boom on seed 1")
        return real.train(mdp, configs)

    monkeypatch.setitem(ALGORITHMS._items, "grpo", Algorithm(real.config, train, real.batchable))
    r = run_protocol(load_protocol(tiny), tmp_path / "out", progress=False)
    summary = store.load_results(r.sweep_path, "summary")
    by_seed = summary.groupby("cfg.seed")["status"].agg(set).to_dict()
    assert by_seed == {0: {"ok"}, 1: {"error"}, 2: {"ok"}}
    assert summary.loc[summary["status"] == "error", "error"].str.contains("boom").all()
    assert r.verdict.evidence["runs"] == 4  # judged on the runs that exist


def test_a_diverging_configuration_is_recorded(tiny, tmp_path):
    r = run_protocol(load_protocol(tiny), tmp_path / "out", overrides={"lr": 1e308}, progress=False)
    summary = store.load_results(r.sweep_path, "summary")
    assert set(summary["status"]) == {"diverged"}
    assert summary["diverged_at"].notna().all()


@pytest.mark.slow
def test_sigkilled_sweep_restarts_to_the_same_result_with_each_run_once(tiny, tmp_path):
    cmd = [sys.executable, "-m", "grpo_lab.cli", "run", str(tiny), "--quick", "--batch-size", "1",
           "--no-figures"]  # fmt: skip
    env = {**os.environ, "COLUMNS": "120"}
    killed = tmp_path / "killed"
    proc = subprocess.Popen([*cmd, "--out", str(killed)], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)  # fmt: skip
    sweep = killed / "tiny-quick"
    deadline = time.time() + 120
    while time.time() < deadline:
        if sweep.exists() and len(store.completed_runs(killed, "tiny-quick")) >= 2:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = store.completed_runs(killed, "tiny-quick")
    assert 2 <= len(before) < 6, "the kill should land mid-sweep"
    stamps = {rid: store.read_summary(killed, "tiny-quick", rid)["written_at"] for rid in before}
    subprocess.run([*cmd, "--out", str(killed)], env=env, check=True, capture_output=True)
    assert len(store.completed_runs(killed, "tiny-quick")) == 6
    for rid, stamp in stamps.items():  # runs finished before the kill were not run again
        assert store.read_summary(killed, "tiny-quick", rid)["written_at"] == stamp
    clean = tmp_path / "clean"
    subprocess.run([*cmd, "--out", str(clean)], env=env, check=True, capture_output=True)
    pd.testing.assert_frame_equal(_steps(sweep), _steps(clean / "tiny-quick"))


# ----------------------------------------------------------------------------- CLI

runner = CliRunner()


def test_cli_run_check_report(tiny, tmp_path):
    out = tmp_path / "out"
    r = runner.invoke(app, ["check", str(tiny)])
    assert r.exit_code == 0 and "quick: 6 runs" in r.output
    r = runner.invoke(app, ["run", str(tiny), "--quick", "--out", str(out)], env={"COLUMNS": "200"})
    assert r.exit_code == 0, r.output
    assert (out / "report.md").exists() and "tiny" in (out / "report.md").read_text()
    r = runner.invoke(app, ["report", str(out)], env={"COLUMNS": "200"})
    assert r.exit_code == 0 and "| tiny |" in r.output


@pytest.mark.parametrize(
    "args, match",
    [
        (["run", "no-such-protocol"], "unknown protocol 'no-such-protocol'"),
        (["run", "TINY", "--set", "lr"], "--set expects key=value"),
        (["run", "TINY", "--set", "lr=-1"], "lr"),
        (["run", "TINY", "--set", "epochz=2"], "has no config field 'epochz'"),
        (["check", "no-such-protocol"], "unknown protocol"),
        (["report", "/nonexistent/dir"], "does not exist"),
    ],
)
def test_cli_user_errors_exit_2_with_a_message(tiny, args, match):
    args = [str(tiny) if a == "TINY" else a for a in args]
    r = runner.invoke(app, args, env={"COLUMNS": "300"})
    assert r.exit_code == 2, r.output
    assert match in r.output
    assert "Traceback" not in r.output


def test_cli_list_names_the_shipped_protocols():
    r = runner.invoke(app, ["list"], env={"COLUMNS": "300"})
    assert r.exit_code == 0
    for name in ("ratio-bound", "trpo-bound", "surrogate-bound"):
        assert name in r.output


@pytest.mark.slow
def test_gradient_protocols_run_judge_and_report(tmp_path):
    """The shipped gradient protocols end to end (quick budget): the verdict is computed from the
    stored gradient experiments, and the report draws the gradient-bias figure first."""
    from grpo_lab import report
    from grpo_lab.protocols import PROTOCOL_DIR

    out = tmp_path / "out"
    p = load_protocol(PROTOCOL_DIR / "gradient-bias.toml")
    r = run_protocol(p, out, progress=False, overrides={"num_batches": 400})
    assert r.ran == 12 and r.verdict.status == "violated" and "grpo" in r.verdict.evidence["biased"]
    summ = store.load_results(r.sweep_path, "summary")
    assert set(summ["cfg.label"]) == {"grpo", "dr_grpo", "dapo", "grpo-no-std", "sum-std", "rloo"}
    # the reference estimator is not biased, GRPO is, in the stored numbers themselves
    rloo, grpo = (summ[summ["cfg.label"] == k] for k in ("rloo", "grpo"))
    assert (rloo["p_direction"] > 0.005).all() and (grpo["p_direction"] < 1e-6).all()
    again = run_protocol(p, out, progress=False, overrides={"num_batches": 400})
    assert again.ran == 0 and again.skipped == 12  # resume
    report.write_report(out)
    md = (out / "report.md").read_text()
    section = md[md.index("## gradient-bias") :]
    assert section.index("### Gradient bias") < section.index("### Figures not drawn")
    assert (out / "figures" / r.sweep_path.name / "gradient-bias.png").is_file()


@pytest.mark.slow
def test_an_lm_protocol_runs_and_is_judged(tmp_path, monkeypatch):
    """lm-ratio-bound on its quick budget: language-model runs go through the same sweep, store
    and verdict path; the verdict reads the sampled tokens' ratios."""
    from grpo_lab.protocols import PROTOCOL_DIR

    monkeypatch.setenv("GRPO_LAB_CACHE", str(tmp_path / "cache"))
    p = load_protocol(PROTOCOL_DIR / "lm-ratio-bound.toml")
    assert p.suite == "lm"
    r = run_protocol(p, tmp_path / "out", budget="quick", progress=False)
    assert r.ran == 8 and r.verdict.status in ("holds", "violated")
    steps = store.load_results(r.sweep_path, "steps")
    assert r.verdict.evidence["steps"] == len(steps) == 8 * 2 * 4 * 2  # runs x iters x epochs x mbs
    # the verdict is the stored numbers' own answer
    outside = (steps["ratio_max"] > 1 + steps["cfg.loss.eps_high"] + 1e-9) | (
        steps["ratio_min"] < 1 - steps["cfg.loss.eps_low"] - 1e-9
    )
    assert r.verdict.evidence["violating_steps"] == int(outside.sum())
    assert r.verdict.status == ("violated" if outside.any() else "holds")
    summ = store.load_results(r.sweep_path, "summary")
    assert {"eval_acc_start", "eval_acc_final"} <= set(summ.columns)


def test_cli_suites():
    runner = CliRunner()
    r = runner.invoke(app, ["run", "--suite", "nosuch", "--quick"])
    assert r.exit_code == 2 and "no protocol in suite 'nosuch'" in r.output and "lm" in r.output
    r = runner.invoke(app, ["list"], env={"COLUMNS": "250"})
    assert r.exit_code == 0 and "lm-compare" in r.output


def test_classic_control_trainers_run_through_the_sweep(tmp_path):
    """A protocol naming a classic-control task: the sweep builds the task, the registered
    trainers take its env_id, and the improvement rule scores the evaluation return."""
    text = """
name = "tiny-classic"
claim = "a claim"
[env]
name = "Acrobot-v1"
[[algorithms]]
name = "classic-ppo"
label = "ppo"
config = { env_id = "Acrobot-v1", num_envs = 2, num_steps = 64, update_epochs = 2 }
[[algorithms]]
name = "classic-trpo"
label = "trpo"
config = { env_id = "Acrobot-v1", n_steps = 64, batch_size = 64, n_critic_updates = 1 }
[grid]
seed = [0, 1]
[budget.quick]
total_timesteps = 256
eval_episodes = 1
[verdict]
rule = "improvement"
params = { better = "ppo", worse = "trpo", score = "eval_return", reps = 200 }
"""
    path = tmp_path / "classic.toml"
    path.write_text(text)
    r = run_protocol(load_protocol(path), tmp_path / "out", budget="quick", progress=False)
    assert r.ran == 4 and r.verdict.status in ("holds", "violated", "inconclusive")
    summ = store.load_results(r.sweep_path, "summary")
    # Acrobot's returns: -1 per step, at most 500 steps
    assert (summ["eval_return"] <= 0).all() and (summ["eval_return"] >= -500).all()
    assert set(summ["cfg.label"]) == {"ppo", "trpo"}
    assert "evaluation return" in r.verdict.summary
    # a configuration naming another task than the protocol's is an error, not a silent override
    from grpo_lab.algorithms.classic import ClassicPPOConfig, train_classic_ppo
    from grpo_lab.envs import make

    with pytest.raises(ValueError, match="configs\\[0\\].env_id = 'CartPole-v1' but the task is"):
        train_classic_ppo(make("Acrobot-v1"), [ClassicPPOConfig()])


@pytest.mark.slow
def test_classic_compare_runs_on_one_env_step_budget(tmp_path):
    """The shipped classic-compare protocol on its quick budget (about 10 s on 2 cores): one
    budget key, total_timesteps, for GRPO, TRPO and PPO; PPO (8 x 32) and TRPO (2 x 512) spend
    whole rollouts, 2048 // 256 and 2048 // 1024 of them, exactly 2048 steps; GRPO stops within
    N - 1 = 31 steps past it. The verdict reports the env steps of each algorithm."""
    from grpo_lab.protocols import PROTOCOL_DIR, expand
    from grpo_lab.report import load_sweep, sample_efficiency_table

    protocol = load_protocol(PROTOCOL_DIR / "classic-compare.toml")
    assert protocol.suite == "classic"
    assert {r.config.total_timesteps for r in expand(protocol, "full")} == {50_000}
    r = run_protocol(protocol, tmp_path / "out", budget="quick", progress=False)
    assert r.ran == 15 and r.verdict.status in ("holds", "violated", "inconclusive")
    summ = store.load_results(r.sweep_path, "summary").set_index("cfg.label")
    assert (summ.loc[["ppo", "trpo"], "env_steps"] == 2048).all()
    assert summ.loc["grpo", "env_steps"].between(2048, 2048 + 31).all()
    ev = r.verdict.evidence
    assert ev["env_steps_grpo"] >= ev["env_steps_trpo"] == 2048
    # the return question only: cost is classic-cost's verdict (issue 12, item 1)
    assert "evaluation return" in r.verdict.summary and "wall time" not in r.verdict.summary
    assert "classic-compare" in r.verdict.scope or "CartPole-v1" in r.verdict.scope
    curves = sample_efficiency_table(load_sweep(r.sweep_path))
    assert set(curves["condition"]) == {"grpo", "trpo", "ppo"}


TUNED = """
name = "tuned"
claim = "a claim"
tune_seeds = [100, 101]
[env]
name = "bandit"
kwargs = { k = 3, seed = 0 }
[[algorithms]]
name = "grpo"
label = "a"
config = { loss = "dapo" }
tune = { lr = [0.001, 0.5] }
[[algorithms]]
name = "grpo"
label = "b"
config = { loss = "dr_grpo", lr = 0.2 }
[grid]
"env.kwargs.seed" = [0, 1]
seed = [0, 1]
[budget.quick]
iterations = 3
[verdict]
rule = "improvement"
params = { better = "a", worse = "b", reps = 200 }
"""


def test_tuned_protocol_tunes_on_its_own_seeds_then_evaluates_on_fresh_ones(tmp_path):
    """Issue 12, item 9: each algorithm's lr is chosen on tuning seeds over every environment of
    the grid (the best mean final J/J*, recomputed here from the stored tuning runs), then the
    evaluation runs use it on the grid's seeds; untuned algorithms run as configured."""
    path = tmp_path / "tuned.toml"
    path.write_text(TUNED)
    p = load_protocol(path)
    r = run_protocol(p, tmp_path / "out", progress=False)
    tune = store.load_results(tmp_path / "out" / "tuned-quick-tune", "summary")
    assert len(tune) == 2 * 2 * 2  # lr x env x tuning seed, label "a" only
    assert set(tune["cfg.seed"]) == {100, 101} and set(tune["cfg.label"]) == {"a"}
    assert set(tune["cfg.env.kwargs.seed"]) == {0, 1}
    means = (tune["j_final"] / tune["j_star"].abs()).groupby(tune["cfg.lr"]).mean()
    best = float(means.idxmax())
    chosen = json.loads((r.sweep_path / "tuned.json").read_text())["chosen"]
    assert chosen == {"a": {"lr": best}} and r.verdict.evidence["tuned"] == chosen
    ev = store.load_results(r.sweep_path, "summary")
    assert len(ev) == 2 * 2 * 2 and set(ev["cfg.seed"]) == {0, 1}  # label x env x seed
    assert set(ev.loc[ev["cfg.label"] == "a", "cfg.lr"]) == {best}
    assert set(ev.loc[ev["cfg.label"] == "b", "cfg.lr"]) == {0.2}
    assert r.verdict.evidence["tasks"] == ["cfg.env.kwargs.seed"]  # two MDPs: two tasks
    assert "tuned on seeds [100, 101]" in r.verdict.scope
    again = run_protocol(p, tmp_path / "out", progress=False)  # resumes both phases
    assert again.ran == 0 and again.skipped == 16


@pytest.mark.slow
@pytest.mark.parametrize(
    "name",
    ["advantage-variance", "grpo-stationary", "adaptive-lr", "c1-sweep", "convergence", "compare",
     "classic-cost"],
)  # fmt: skip
def test_new_and_redesigned_protocols_run_their_quick_budget(tmp_path, name):
    """Issue 12's new and redesigned protocols end to end on their quick budgets: every run is
    stored, and the verdict carries a status, the hypothesis it tested and its scope."""
    from grpo_lab.protocols import PROTOCOL_DIR, expand, expand_tuning

    p = load_protocol(PROTOCOL_DIR / f"{name}.toml")
    r = run_protocol(p, tmp_path / "out", budget="quick", progress=False)
    assert r.ran == len(expand(p, "quick")) + len(expand_tuning(p, "quick"))
    v = json.loads((r.sweep_path / "verdict.json").read_text())
    assert v["status"] in ("holds", "violated", "inconclusive") and v["summary"]
    assert v["hypothesis"] and v["scope"].endswith("runs") or "tuned on seeds" in v["scope"]
    assert f"{len(expand(p, 'quick'))} runs" in v["scope"]
