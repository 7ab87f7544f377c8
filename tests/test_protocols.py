"""Tests of grpo_lab/protocols.py: schema errors name the field path, grid expansion, and every
verdict rule on synthetic data where the answer is known both ways."""

import math

import pandas as pd
import pytest

from grpo_lab.protocols import (
    VERDICTS,
    ProtocolError,
    SweepData,
    _upper_rate_bound,
    compute_costs,
    expand,
    find_protocols,
    load_protocol,
)

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


# ----------------------------------------------------------------------------- verdict rules
# Each rule is fed steps where the answer is known, both ways: a rule that can only say one
# thing is a defect.


def _steps(**cols):
    n = len(next(iter(cols.values())))
    return pd.DataFrame({"run_id": ["a"] * (n // 2) + ["b"] * (n - n // 2), **cols})


def test_ratio_bound_rule_both_ways():
    rule = VERDICTS.get("ratio-bound")
    inside = _steps(
        **{"cfg.loss.eps_low": [0.2] * 4, "cfg.loss.eps_high": [0.2] * 4},
        exact_ratio_max=[1.1, 1.2, 1.05, 1.19],
        exact_ratio_min=[0.9, 0.8, 0.95, 0.81],
        exact_frac_outside=[0.0] * 4,
    )
    status, _, ev = rule(inside, {})
    assert status == "holds" and ev["violating_steps"] == 0
    assert ev["violation_rate_upper95"] == pytest.approx(1 - 0.05 ** (1 / 4))
    outside = inside.assign(exact_ratio_max=[1.1, 1.35, 1.05, 1.19])
    status, summary, ev = rule(outside, {})
    assert status == "violated" and ev["violating_steps"] == 1 and ev["runs_with_violation"] == 1
    assert ev["max_excursion"] == pytest.approx(0.15)
    below = inside.assign(exact_ratio_min=[0.9, 0.8, 0.7, 0.81])  # the low side counts too
    assert rule(below, {})[0] == "violated"
    asym = outside.assign(**{"cfg.loss.eps_high": [0.4] * 4})  # clip-higher: 1.35 <= 1.4
    assert rule(asym, {})[0] == "holds"
    empty = inside.assign(exact_ratio_max=[math.nan] * 4)
    assert rule(empty, {})[0] == "inconclusive"


def test_trpo_bound_rule_both_ways():
    rule = VERDICTS.get("trpo-bound")
    ok = _steps(bound_slack=[0.0, 0.5, 2.0, 1e-12], true_gain=[0.1] * 4)
    assert rule(ok, {})[0] == "holds"
    bad = ok.assign(bound_slack=[0.0, 0.5, -0.01, 1.0])
    status, _, ev = rule(bad, {})
    assert status == "violated" and ev["min_slack"] == pytest.approx(-0.01)
    assert rule(bad, {"tol": 0.1})[0] == "holds"  # the tolerance is a parameter


def test_surrogate_bound_rule_both_ways():
    rule = VERDICTS.get("surrogate-bound")
    ok = _steps(clipped_gain=[0.1, 0.2, 0.0, -0.1], true_gain=[0.1, 0.3, 0.0, 0.2])
    assert rule(ok, {})[0] == "holds"
    bad = ok.assign(clipped_gain=[0.1, 0.4, 0.0, -0.1])
    status, _, ev = rule(bad, {})
    assert status == "violated" and ev["max_overestimate"] == pytest.approx(0.1)


def test_clopper_pearson_zero_event_bound():
    # 0 events in n trials: the exact 95% upper bound p solves (1 - p)^n = 0.05.
    for n in (1, 10, 1000):
        p = _upper_rate_bound(n)
        assert (1 - p) ** n == pytest.approx(0.05)
    assert _upper_rate_bound(0) == 1.0


def test_zipped_axis_sets_both_fields(tmp_path):
    text = GOOD.replace('"loss.eps_low" = [0.1, 0.2]', '"loss.eps_low+loss.eps_high" = [0.1, 0.3]')
    runs = expand(load_protocol(_write(tmp_path, text)), "quick")
    assert {(r.config.loss.eps_low, r.config.loss.eps_high) for r in runs} == {
        (0.1, 0.1),
        (0.3, 0.3),
    }


# ----------------------------------------------------------------------------- statistical rules


def _convergence_data(losses_by_run, gaps_by_run, j_star=1.0):
    steps, its, summ = [], [], []
    for rid, (losses, gaps) in enumerate(zip(losses_by_run, gaps_by_run, strict=True)):
        for e, (loss, gap) in enumerate(zip(losses, gaps, strict=True)):
            steps.append({"run_id": str(rid), "step": e, "iteration": e, "pg_loss": loss})
            its.append({"run_id": str(rid), "iteration": e, "gap": gap, "J": j_star - gap})
        summ.append(
            {"run_id": str(rid), "j_star": j_star, "j_final": j_star - gaps[-1], "status": "ok"}
        )
    return SweepData(pd.DataFrame(steps), pd.DataFrame(its), pd.DataFrame(summ))


def test_convergence_rule_both_ways():
    rule = VERDICTS.get("convergence")
    n_it = 20
    flat = [0.0] * n_it  # zero loss variance: the seed's rule fires at epoch 11
    noisy = [0.1 * (-1) ** e for e in range(n_it)]  # variance 0.01: never fires
    closing = [max(0.0, 0.5 - 0.1 * e) for e in range(n_it)]  # gap closed from epoch 5
    open_gap = [0.5] * n_it
    # honest runs: fires only where the gap is closed, never where it is open -> holds
    good = _convergence_data([flat] * 40 + [noisy] * 40, [closing] * 40 + [open_gap] * 40)
    status, _, ev = rule(good, {})
    assert status == "holds" and ev["false_convergence"] == 0 and ev["missed"] == 0
    # the seed's failure: a flat loss while the gap is open -> false convergence -> violated
    bad = _convergence_data([flat] * 40, [open_gap] * 40)
    status, _, ev = rule(bad, {})
    assert status == "violated" and ev["false_convergence"] == 40
    # missed: converged runs whose loss stays noisy
    missed = _convergence_data([noisy] * 40, [closing] * 40)
    assert rule(missed, {})[0] == "violated"
    # too few runs to tell
    assert rule(_convergence_data([flat] * 2, [closing] * 2), {})[0] == "inconclusive"


def _scores(groups, axis="cfg.loss.eps_low"):
    rows = []
    for value, scores in groups.items():
        for i, sc in enumerate(scores):
            rows.append({"run_id": f"{value}-{i}", axis: value, "j_final": sc, "j_star": 1.0,
                         "status": "ok", "cfg.label": value})  # fmt: skip
    return SweepData(steps=pd.DataFrame(), summary=pd.DataFrame(rows))


def test_best_setting_rule_both_ways():
    rule = VERDICTS.get("best-setting")
    params = {"axis": "cfg.loss.eps_low", "claimed": 0.2, "reps": 500}
    spread = [0.0, 0.01, -0.01, 0.02, -0.02, 0.005, -0.005, 0.015]
    win = _scores(
        {
            0.1: [0.6 + d for d in spread],
            0.2: [0.9 + d for d in spread],
            0.3: [0.7 + d for d in spread],
        }
    )
    assert rule(win, params)[0] == "holds"
    lose = _scores(
        {
            0.1: [0.95 + d for d in spread],
            0.2: [0.6 + d for d in spread],
            0.3: [0.7 + d for d in spread],
        }
    )
    status, summary, ev = rule(lose, params)
    assert status == "violated" and ev["best"] == 0.1
    tie = _scores({0.1: [0.9 + d for d in spread], 0.2: [0.9 + d for d in spread]})
    assert rule(tie, params)[0] == "inconclusive"
    assert rule(tie, {**params, "claimed": 0.5})[0] == "inconclusive"


def test_improvement_rule_both_ways():
    rule = VERDICTS.get("improvement")
    params = {"better": "grpo", "worse": "ppo", "reps": 500}
    hi = [0.9, 0.92, 0.95, 0.91, 0.93, 0.94]
    lo = [0.5, 0.55, 0.52, 0.6, 0.58, 0.51]
    assert rule(_scores({"grpo": hi, "ppo": lo}), params)[0] == "holds"
    assert rule(_scores({"grpo": lo, "ppo": hi}), params)[0] == "violated"
    assert rule(_scores({"grpo": hi, "ppo": hi}), params)[0] == "inconclusive"
    assert rule(_scores({"grpo": hi}), params)[0] == "inconclusive"


def _trend_data(lr_to_speed_iters):
    """Runs whose J crosses 0.9 J* at a given iteration, by lr."""
    its, summ = [], []
    for k, (lr, hit) in enumerate(lr_to_speed_iters):
        rid = f"r{k}"
        for e in range(12):
            its.append({"run_id": rid, "iteration": e, "J": 0.95 if e >= hit else 0.5})
        summ.append({"run_id": rid, "cfg.lr": lr, "j_star": 1.0, "j_final": 0.95, "status": "ok"})
    return SweepData(pd.DataFrame(), pd.DataFrame(its), pd.DataFrame(summ))


def test_monotone_trend_rule_both_ways():
    rule = VERDICTS.get("monotone-trend")
    params = {"axis": "cfg.lr", "metric": "speed", "direction": "decreasing", "reps": 500}
    lrs = [0.01, 0.03, 0.1, 0.3, 1.0] * 4
    faster = _trend_data([(lr, {0.01: 10, 0.03: 8, 0.1: 6, 0.3: 4, 1.0: 2}[lr]) for lr in lrs])
    status, _, ev = rule(faster, params)
    assert status == "holds" and ev["rho"] < -0.9
    slower = _trend_data([(lr, {0.01: 2, 0.03: 4, 0.1: 6, 0.3: 8, 1.0: 10}[lr]) for lr in lrs])
    assert rule(slower, params)[0] == "violated"
    flat = _trend_data([(lr, 5 + (i % 2)) for i, lr in enumerate(lrs)])
    assert rule(flat, params)[0] == "inconclusive"
    never = _trend_data([(lr, 99) for lr in lrs])  # censored everywhere: no variation
    assert rule(never, params)[0] == "inconclusive"


def _gradient_runs(rows):
    """Summary rows of gradient experiments: (label, p, relative error, MC error, scale)."""
    out = []
    for i, (label, p, err, noise, scale) in enumerate(rows):
        out.append({"run_id": f"r{i}", "status": "ok", "cfg.label": label, "p_bias": p,
                    "p_direction": p, "rel_norm_error": err, "dir_rel_error": err,
                    "noise_rel": noise, "fit_scale": scale, "cosine": 1.0 - err,
                    "num_samples": 1000})  # fmt: skip
    return SweepData(steps=pd.DataFrame(), summary=pd.DataFrame(out))


def test_unbiased_rule_both_ways():
    rule = VERDICTS.get("unbiased")
    # both estimators unbiased: p large, bias + 3 MC errors < 0.1
    good = _gradient_runs([("a", 0.5, 0.01, 0.01, 1.0), ("b", 0.9, 0.02, 0.01, 1.0)])
    status, summary, ev = rule(good, {"test": "scale"})
    assert status == "holds" and ev["biased"] == [] and "unbiased within 0.1: ['a', 'b']" in summary
    # one biased (p below alpha / runs = 0.005): the claim is violated
    bad = _gradient_runs([("a", 0.5, 0.01, 0.01, 1.0), ("b", 1e-4, 0.3, 0.01, 1.0)])
    status, summary, ev = rule(bad, {"test": "scale"})
    assert status == "violated" and ev["biased"] == ["b"]
    # ... unless the claim is only about "a"
    assert rule(bad, {"test": "scale", "subject": ["a"]})[0] == "holds"
    # p = 0.006 is significant alone (< 0.01) but not among two runs (Bonferroni: 0.005)
    edge = _gradient_runs([("a", 0.5, 0.01, 0.01, 1.0), ("b", 0.006, 0.01, 0.01, 1.0)])
    assert rule(edge, {"test": "scale"})[0] == "holds"
    assert rule(edge, {"test": "scale", "subject": ["b"]})[0] == "violated"
    # no significant bias but too much Monte Carlo error to bound it: inconclusive
    noisy = _gradient_runs([("a", 0.5, 0.05, 0.1, 1.0)])
    status, _, ev = rule(noisy, {"test": "scale"})
    assert status == "inconclusive" and "undetermined 1/1" in ev["estimator a"]
    # in direction, the MC error is relative to the fitted multiple: 0.01 / 0.05 = 0.2
    small = _gradient_runs([("a", 0.5, 0.01, 0.01, 0.05)])
    assert rule(small, {"test": "direction"})[0] == "inconclusive"
    assert rule(small, {"test": "direction", "tolerance": 0.7})[0] == "holds"


def test_unbiased_rule_without_gradient_data_and_bad_params():
    rule = VERDICTS.get("unbiased")
    status, summary, _ = rule(_scores({0.1: [0.5, 0.6]}), {})
    assert status == "inconclusive" and "no gradient experiment" in summary
    assert (
        rule(_gradient_runs([("a", 0.5, 0.0, 0.0, 1.0)]), {"subject": ["z"]})[0] == "inconclusive"
    )
    with pytest.raises(ValueError, match="test must be 'direction' or 'scale'"):
        rule(_gradient_runs([("a", 0.5, 0.0, 0.0, 1.0)]), {"test": "both"})


def test_ratio_bound_rule_on_sampled_token_ratios():
    rule = VERDICTS.get("ratio-bound")
    steps = _steps(
        **{"cfg.loss.eps_low": [0.2] * 3, "cfg.loss.eps_high": [0.2] * 3},
        ratio_max=[1.1, 1.19, 1.05],
        ratio_min=[0.9, 0.85, 0.95],
    )
    status, _, ev = rule(steps, {"ratio": "ratio"})
    assert status == "holds" and ev["max_ratio"] == pytest.approx(1.19)
    assert rule(steps.assign(ratio_min=[0.9, 0.7, 0.95]), {"ratio": "ratio"})[0] == "violated"
    with pytest.raises(ValueError, match="ratio must be 'exact_ratio' or 'ratio'"):
        rule(steps, {"ratio": "sampled"})


def test_final_score_rules_use_eval_accuracy_for_language_models():
    rule = VERDICTS.get("improvement")
    rows = []
    for label, accs in {
        "grpo": [0.6, 0.62, 0.65, 0.61],
        "dr_grpo": [0.4, 0.42, 0.41, 0.45],
    }.items():
        for i, a in enumerate(accs):
            rows.append({"run_id": f"{label}{i}", "cfg.label": label, "status": "ok",
                         "j_final": None, "j_star": None, "eval_acc_final": a})  # fmt: skip
    data = SweepData(steps=pd.DataFrame(), summary=pd.DataFrame(rows))
    params = {"better": "grpo", "worse": "dr_grpo", "reps": 300}
    assert rule(data, params)[0] == "holds"  # "auto": no return, so the accuracy
    assert rule(data, {**params, "score": "eval_acc"})[0] == "holds"
    assert rule(data, {**params, "better": "dr_grpo", "worse": "grpo"})[0] == "violated"
    with pytest.raises(ValueError, match="unknown score 'loss'"):
        rule(data, {**params, "score": "loss"})


def _timed_iterations(batches):
    """Iteration rows of runs timed in batches: {batch: (label, runs, [(rollout_s, update_s,
    batch_steps), ...])}; every run of a batch logs the batch's timings (env_steps_per_s =
    batch_steps / rollout_s), the last run of a batch stops one iteration early (NaN, as a
    classic GRPO run whose budget ran out first)."""
    its, summ = [], []
    for batch, (label, runs, timings) in batches.items():
        for r in range(runs):
            rid = f"{batch}-{r}"
            summ.append({"run_id": rid, "batch": batch, "cfg.label": label, "status": "ok"})
            for i, (roll, upd, n) in enumerate(timings):
                done = r == runs - 1 and i == len(timings) - 1 and runs > 1
                its.append({"run_id": rid, "iteration": i, "cfg.label": label,
                            "rollout_time": math.nan if done else roll,
                            "update_time": math.nan if done else upd,
                            "env_steps_per_s": math.nan if done else n / roll})  # fmt: skip
    return pd.DataFrame(its), pd.DataFrame(summ)


def test_compute_costs_hand_worked_with_the_batch_as_unit():
    # batch "a" (2 runs): rollouts 0.1 s and 0.2 s for 100 and 300 steps, updates 0.3 s and 0.1 s:
    #   rollout 1e6 * 0.3 / 400 = 750 us per step, update 1e6 * 0.4 / 400 = 1000, total 1750
    # batch "b" (1 run): 0.05 s rollout, 0.05 s update, 100 steps: 500, 500, 1000
    its, summ = _timed_iterations(
        {
            "a": ("grpo", 2, [(0.1, 0.3, 100), (0.2, 0.1, 300)]),
            "b": ("trpo", 1, [(0.05, 0.05, 100)]),
        }
    )
    costs = compute_costs(its, summ).set_index("batch")
    assert costs.loc["a", "runs"] == 2 and costs.loc["a", "label"] == "grpo"
    assert costs.loc["a", "rollout_us_per_step"] == pytest.approx(750)
    assert costs.loc["a", "update_us_per_step"] == pytest.approx(1000)
    assert costs.loc["a", "total_us_per_step"] == pytest.approx(1750)
    assert list(costs.loc["b", ["rollout_us_per_step", "total_us_per_step"]]) == pytest.approx(
        [500, 1000]
    )
    # without the batch ids each run is its own measurement; a-1 lost its last iteration
    alone = compute_costs(its).set_index("batch")
    assert len(alone) == 3
    assert alone.loc["a-1", "update_us_per_step"] == pytest.approx(1e6 * 0.3 / 100)
    with pytest.raises(ValueError, match=r"iterations lacks \['update_time'\]"):
        compute_costs(its.drop(columns="update_time"))


def test_improvement_rule_cost_evidence_never_changes_the_status():
    rule = VERDICTS.get("improvement")
    hi, lo = [400.0, 450.0, 500.0, 480.0], [100.0, 120.0, 90.0, 110.0]
    rows = [{"run_id": f"{k}-{i}", "cfg.label": k, "status": "ok", "eval_return": v,
             "env_steps": 2048.0} for k, vals in (("grpo", hi), ("trpo", lo))
            for i, v in enumerate(vals)]  # fmt: skip
    # one batch per label: 1e6 * 0.01 / 1000 = 10 us (grpo), 1e6 * 0.04 / 1000 = 40 us (trpo)
    its, _ = _timed_iterations(
        {"g": ("grpo", 1, [(0.02, 0.01, 1000)]), "t": ("trpo", 1, [(0.02, 0.04, 1000)])}
    )
    its["run_id"] = its["cfg.label"] + "-0"  # those runs: the first of each label
    summ = pd.DataFrame(rows)
    params = {"better": "grpo", "worse": "trpo", "score": "eval_return", "reps": 300}
    plain = rule(SweepData(pd.DataFrame(), its, summ), params)
    status, desc, ev = rule(SweepData(pd.DataFrame(), its, summ), {**params, "cost": True})
    assert status == plain[0] == "holds" and "wall time" not in plain[1] and "wall time" in desc
    assert ev["env_steps_grpo"] == ev["env_steps_trpo"] == 2048
    assert ev["batches_grpo"] == 1 and ev["update_us_per_step_grpo"] == pytest.approx(10)
    assert ev["update_cost_ratio"] == pytest.approx(4.0)
    assert "grpo 10 us, trpo 40 us (4x) (one timed batch each: no interval)" in desc
    assert "p_cheaper_update" not in ev
    # three batches per label, grpo always cheaper: P(grpo cheaper) = 1 with its interval
    its3, summ3 = _timed_iterations(
        {f"{k}{b}": (k, 1, [(0.02, u * (1 + 0.1 * b), 1000)])
         for k, u in (("grpo", 0.01), ("trpo", 0.04)) for b in range(3)}
    )  # fmt: skip
    summ3 = summ3.assign(eval_return=[400.0, 450.0, 500.0, 100.0, 120.0, 90.0], env_steps=2048.0)
    status, desc, ev = rule(SweepData(pd.DataFrame(), its3, summ3), {**params, "cost": True})
    assert status == "holds" and ev["batches_trpo"] == 3
    assert ev["p_cheaper_update"] == 1.0 and ev["p_cheaper_update_ci95"] == [1.0, 1.0]
    assert "P(grpo cheaper) = 1.00" in desc
