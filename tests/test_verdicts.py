"""Tests of grpo_lab/verdicts.py: every verdict rule on synthetic data where the answer is known,
each outcome (holds / violated / inconclusive) reached, at the shipped protocols' own run counts;
the no-signal guards; the defects of issue 12, each with a test that failed before the fix."""

import math

import numpy as np
import pandas as pd
import pytest

from grpo_lab import store
from grpo_lab.protocols import expand, find_protocols, load_protocol
from grpo_lab.verdicts import (
    VERDICTS,
    SweepData,
    _upper_rate_bound,
    clopper_pearson,
    compute_costs,
    min_runs_for_holds,
)

# ----------------------------------------------------------------------------- rules, both ways
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
    status, summary, ev = rule(inside, {})
    assert status == "holds" and ev["violating_steps"] == 0 and ev["steps"] == 4
    # item 6: exact checks of a theorem are counted, not read as a binomial sample
    assert "0 counterexamples to |r - 1| <= eps in 4 exact checks" in summary
    assert "rate" not in summary and not any("rate" in k for k in ev)
    outside = inside.assign(exact_ratio_max=[1.1, 1.35, 1.05, 1.19])
    status, summary, ev = rule(outside, {})
    assert status == "violated" and ev["violating_steps"] == 1
    assert ev["runs_with_violation"] == 1
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
    flat = [0.05] * n_it  # zero loss variance (a loss that is not 0): the rule fires at epoch 11
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
    """Summary rows: run i of every group shares cfg.seed = i (paired across the axis)."""
    rows = []
    for value, scores in groups.items():
        for i, sc in enumerate(scores):
            rows.append({"run_id": f"{value}-{i}", axis: value, "j_final": sc, "j_star": 1.0,
                         "status": "ok", "cfg.label": value, "cfg.seed": i})  # fmt: skip
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
    assert status == "violated" and "[0.1, 0.3] beat 0.2" in summary
    # the same per-value spreads, shifted per seed: paired differences are not 0 on average
    mixed = _scores({0.1: [0.9 + d for d in spread], 0.2: [0.9 + d for d in spread[::-1]]})
    assert rule(mixed, params)[0] == "inconclusive"
    tie = _scores({0.1: [0.9 + d for d in spread], 0.2: [0.9 + d for d in spread]})
    status, summary, ev = rule(tie, params)  # identical in every pair: the axis was inert
    assert status == "inconclusive" and summary.startswith("no signal: every value")
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
    with pytest.raises(ValueError, match="test"):
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
    with pytest.raises(ValueError, match="ratio"):
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
    with pytest.raises(ValueError, match="score"):
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


# ----------------------------------------------------------------------------- issue 12 defects


def test_convergence_runs_needed_and_loss_identically_zero():
    # two-sided 95% Clopper-Pearson: 0 errors in n runs hold at max_error 0.1 only from n = 36
    assert min_runs_for_holds(0.1) == 36
    assert clopper_pearson(0, 35)[1] >= 0.1 > clopper_pearson(0, 36)[1]
    assert clopper_pearson(0, 16)[1] == pytest.approx(0.206, abs=1e-3)  # the old 16 runs
    rule = VERDICTS.get("convergence")
    closing = [max(0.0, 0.5 - 0.1 * e) for e in range(20)]
    zero = [0.0] * 20  # one optimiser step per batch: the loss is identically 0
    status, summary, ev = rule(_convergence_data([zero] * 8, [closing] * 8), {})
    assert status == "inconclusive" and summary.startswith("no signal: the policy loss")
    assert "uninformative" in summary and ev["runs_loss_identically_zero"] == 8
    # mixed: the zero-loss runs are left out and counted, the others judged
    moving = [0.05] * 20
    data = _convergence_data([zero] * 8 + [moving] * 40, [closing] * 48)
    status, summary, ev = rule(data, {})
    assert status == "holds" and ev["runs_judged"] == 40 and ev["runs_loss_identically_zero"] == 8
    assert "8 runs with a loss identically zero left out" in summary


def test_best_setting_pairs_runs_and_stratifies_the_iqm():
    rule = VERDICTS.get("best-setting")
    # lr strata at very different levels and seeds with large shared offsets: unpaired CIs of
    # the three eps values overlap, but eps = 0.2 beats the others by 0.05 in every pair
    rows, k = [], 0
    for lr, level in ((0.03, 0.2), (0.1, 0.5), (0.3, 0.8)):
        for seed, off in enumerate((-0.15, -0.05, 0.0, 0.05, 0.15)):
            for eps, eff in ((0.1, 0.0), (0.2, 0.05), (0.3, 0.01)):
                rows.append({"run_id": f"r{k}", "cfg.lr": lr, "cfg.seed": seed,
                             "cfg.loss.eps_low": eps, "cfg.loss.eps_high": eps, "status": "ok",
                             "j_final": level + off + eff + 0.001 * seed * eps, "j_star": 1.0})  # fmt: skip
                k += 1
    data = SweepData(pd.DataFrame(), summary=pd.DataFrame(rows))
    params = {"axis": "cfg.loss.eps_low", "claimed": 0.2, "reps": 500}
    status, summary, ev = rule(data, params)
    assert status == "holds", summary
    assert ev["paired_by"] == ["cfg.lr", "cfg.seed"] and ev["strata"] == ["cfg.lr"]
    # the zipped eps_high moves with the axis and is not a pairing column
    d = ev["paired_difference_ci"]["0.1"]
    assert d[0] == pytest.approx(-0.05 + 0.001 * np.mean([s * -0.1 for s in range(5)]), abs=1e-9)
    assert d[2] < 0
    # the unpaired intervals overlap: the old rule (IQM CIs compared) could not say holds
    iqm = ev["iqm_ci"]
    assert iqm["0.2"][1] < iqm["0.1"][2]
    # stratified IQM = mean over lr strata of each stratum's IQM (hand-worked for eps = 0.1)
    sc = pd.DataFrame(rows).query("`cfg.loss.eps_low` == 0.1")
    from scipy.stats import trim_mean

    want = np.mean([trim_mean(g["j_final"], 0.25) for _, g in sc.groupby("cfg.lr")])
    assert iqm["0.1"][0] == pytest.approx(want)


def test_improvement_with_one_run_is_inconclusive_with_the_reason():
    rule = VERDICTS.get("improvement")
    data = _scores({"grpo": [0.9], "ppo": [0.5, 0.6, 0.55]})
    status, summary, _ = rule(data, {"better": "grpo", "worse": "ppo", "reps": 200})
    assert status == "inconclusive" and "grpo has 1" in summary


def test_unbiased_counts_a_diverged_run_against_its_estimator():
    rule = VERDICTS.get("unbiased")
    data = _gradient_runs([("a", 0.5, 0.01, 0.01, 1.0), ("b", 0.5, 0.01, 0.01, 1.0)])
    assert rule(data, {"test": "scale"})[0] == "holds"
    data.summary.loc[1, "status"] = "diverged"  # its finite samples look unbiased
    status, summary, ev = rule(data, {"test": "scale"})
    assert status == "violated" and ev["biased"] == ["b"] and "1 diverged" in summary


def test_importance_sampling_judges_only_the_seeds_estimators():
    p = load_protocol(find_protocols()["importance-sampling"])
    assert sorted(p.verdict.params["subject"]) == ["clipped-ratio", "token"]
    rule = VERDICTS.get("unbiased")
    rows = [("token", 0.5, 0.01, 0.01, 1.0), ("clipped-ratio", 0.5, 0.01, 0.01, 1.0),
            ("token-truncated", 1e-9, 0.3, 0.01, 1.0)]  # fmt: skip
    status, _, ev = rule(_gradient_runs(rows), p.verdict.params)
    assert status == "holds"  # the truncated variant is biased by construction: shown, not judged
    assert any("token-truncated (shown beside, not judged)" in k for k in ev)


@pytest.mark.parametrize(
    "name, quoted, not_quoted",
    [
        ("gradient-bias", "Proof sketch, step 4", "converges to a local optimum"),
        ("lm-compare", "Advanced loss functions", "dual-clipping, importance sampling"),
        ("lm-importance-sampling", "Corrects for off-policy data", "unbiased gradient"),
        ("classic-compare", "learns at least as well", "No need for conjugate gradient"),
        ("classic-cost", "No need for conjugate gradient", "learns"),
    ],
)
def test_each_protocol_quotes_the_sentence_it_tests(name, quoted, not_quoted):
    p = load_protocol(find_protocols()[name])
    assert quoted in p.claim and not_quoted not in p.claim


def test_efficiency_claim_is_judged_on_cost_and_return_separately():
    cost = load_protocol(find_protocols()["classic-cost"])
    ret = load_protocol(find_protocols()["classic-compare"])
    assert cost.verdict.rule == "cost" and ret.verdict.rule == "improvement"
    assert len(cost.grid["hidden"]) >= 3  # growth with the parameter count needs sizes


def test_lr_sweeps_score_both_halves():
    for name in ("lr-sweep", "classic-lr-sweep"):
        assert load_protocol(find_protocols()[name]).verdict.rule == "speed-and-instability"


# ----------------------------------------------------------------------------- no signal


def _eps_sweep(scores_by_eps, seeds=5, **extra):
    rows = []
    for eps, f in scores_by_eps.items():
        for s in range(seeds):
            rows.append({"run_id": f"{eps}-{s}", "cfg.clip_coef": eps, "cfg.seed": s,
                         "status": "ok", "eval_return": f(s), **extra})  # fmt: skip
    return pd.DataFrame(rows)


def test_no_signal_ceiling_names_the_ceiling():
    rule = VERDICTS.get("best-setting")
    summ = _eps_sweep({0.1: lambda s: 500.0, 0.2: lambda s: 500.0, 0.3: lambda s: 500.0})
    data = SweepData(pd.DataFrame(), summary=summ)
    params = {"axis": "cfg.clip_coef", "claimed": 0.2, "score": "eval_return", "ceiling": 500.0}
    status, summary, ev = rule(data, params)
    assert status == "inconclusive" and summary.startswith("no signal: ceiling")
    assert ev["runs_at_ceiling"] == 15
    # J/J* has its ceiling 1 without a parameter
    status, summary, _ = VERDICTS.get("improvement")(
        _scores({"grpo": [1.0] * 4, "ppo": [1.0] * 4}), {"better": "grpo", "worse": "ppo"}
    )
    assert summary.startswith("no signal: ceiling")


def test_no_signal_zero_variance_groups_and_clip_never_active():
    rule = VERDICTS.get("best-setting")
    summ = _eps_sweep({0.1: lambda s: 0.1 * s, 0.2: lambda s: 0.1 * s + 0.01, 0.3: lambda s: 0.2})
    its = summ[["run_id"]].assign(iteration=0, zero_std_frac=1.0)
    params = {"axis": "cfg.clip_coef", "claimed": 0.2, "score": "eval_return"}
    status, summary, _ = rule(SweepData(pd.DataFrame(), its, summ), params)
    assert summary.startswith("no signal: every group had zero reward variance")
    steps = summ[["run_id"]].assign(step=0, clip_frac=0.0)
    status, summary, _ = rule(SweepData(steps, its.assign(zero_std_frac=0.5), summ), params)
    assert summary.startswith("no signal: the clip never activated")
    steps = steps.assign(clip_frac=0.1)  # the clip acts: the data are judged
    status, summary, _ = rule(SweepData(steps, its.assign(zero_std_frac=0.5), summ), params)
    assert not summary.startswith("no signal")


def test_no_signal_inert_axis():
    rule = VERDICTS.get("best-setting")
    summ = _eps_sweep({e: (lambda s: 100.0 + 10 * s) for e in (0.1, 0.2, 0.3)})
    status, summary, _ = rule(
        SweepData(pd.DataFrame(), summary=summ),
        {"axis": "cfg.clip_coef", "claimed": 0.2, "score": "eval_return"},
    )
    assert status == "inconclusive" and "the swept axis was inert" in summary


# ----------------------------------------------------------------------------- new rules


def _tradeoff_data(lrs, hit_of, drawdown_of, seeds=4, n_it=20):
    its, summ, k = [], [], 0
    for lr in lrs:
        for s in range(seeds):
            rid = f"r{k}"
            k += 1
            hit, dd = hit_of(lr, s), drawdown_of(lr, s)
            for e in range(n_it):
                j = 0.95 if e >= hit else 0.5
                if e == n_it - 1:
                    j -= dd
                its.append({"run_id": rid, "iteration": e, "J": j})
            summ.append({"run_id": rid, "cfg.lr": lr, "cfg.seed": s, "j_star": 1.0,
                         "j_final": its[-1]["J"], "status": "ok"})  # fmt: skip
    return SweepData(pd.DataFrame(), pd.DataFrame(its), pd.DataFrame(summ))


LRS = [0.01, 0.03, 0.1, 0.3, 1.0]


def test_speed_and_instability_reaches_each_outcome_and_names_the_half():
    rule = VERDICTS.get("speed-and-instability")
    params = {"axis": "cfg.lr", "reps": 500}
    rank = {lr: i for i, lr in enumerate(LRS)}
    fast = lambda lr, s: 15 - 3 * rank[lr]  # noqa: E731
    unstable = lambda lr, s: 0.02 * rank[lr] + 0.001 * s  # noqa: E731
    status, summary, ev = rule(_tradeoff_data(LRS, fast, unstable), params)
    assert status == "holds" and ev["speed_status"] == ev["instability_status"] == "holds"
    stable = lambda lr, s: 0.0  # noqa: E731
    status, summary, _ = rule(_tradeoff_data(LRS, fast, stable), params)
    assert status == "inconclusive" and "the instability half is not shown" in summary
    calmer = lambda lr, s: 0.1 - 0.02 * rank[lr] + 0.001 * s  # noqa: E731
    status, summary, _ = rule(_tradeoff_data(LRS, fast, calmer), params)
    assert status == "violated" and "the instability half fails" in summary


def _cost_iterations(cost_of, sizes=(16, 64, 256), n_it=8, jitter=0.05):
    """Timed iterations: cost_of(label, size) us per env step, 1000 steps per iteration."""
    its, summ, k = [], [], 0
    for label in ("grpo", "trpo"):
        for z in sizes:
            b = f"{label}-{z}"
            summ.append({"run_id": b, "batch": b, "cfg.label": label, "status": "ok"})
            for i in range(n_it):
                upd = cost_of(label, z) * (1 + jitter * ((i % 3) - 1)) * 1000 / 1e6
                its.append({"run_id": b, "iteration": i, "cfg.label": label, "cfg.hidden": z,
                            "rollout_time": 0.01, "update_time": upd,
                            "env_steps_per_s": 1000 / 0.01})  # fmt: skip
            k += 1
    return SweepData(pd.DataFrame(), pd.DataFrame(its), pd.DataFrame(summ))


def test_cost_rule_reaches_each_outcome():
    rule = VERDICTS.get("cost")
    params = {"cheaper": "grpo", "than": "trpo", "reps": 500}
    cheap = lambda lab, z: (10 if lab == "grpo" else 30) * z**0.5  # noqa: E731
    status, summary, ev = rule(_cost_iterations(cheap), params)
    assert status == "holds", summary
    assert ev["update_us_per_step_ratio_ci"]["64"][0] == pytest.approx(3.0)
    assert ev["update_us_per_step_growth_exponent_grpo"] == pytest.approx(0.5, abs=0.02)
    assert ev["work_half"] == "not measured" and "work: not measured" in summary
    dear = lambda lab, z: (30 if lab == "grpo" else 10) * z**0.5  # noqa: E731
    assert rule(_cost_iterations(dear), params)[0] == "violated"
    # cheaper at small sizes but growing faster: the scalability half fails
    steep = lambda lab, z: 10 * z**1.0 if lab == "grpo" else 400 * z**0.3  # noqa: E731
    status, summary, _ = rule(_cost_iterations(steep), params)
    assert status == "violated" and "b = 1.00 (grpo)" in summary
    same = lambda lab, z: 10 * z**0.5  # noqa: E731
    assert rule(_cost_iterations(same), params)[0] == "inconclusive"


def _variance_runs(ratios, se=0.02, points=3):
    rows, k = [], 0
    for p in range(points):
        for label, r in {"none": 1.0, **ratios}.items():
            rows.append({"run_id": f"r{k}", "status": "ok", "cfg.label": label,
                         "cfg.point_seed": p, "grad_var_rel_dir": 2.0 * r,
                         "grad_var_rel_dir_se": 2.0 * r * se})  # fmt: skip
            k += 1
    return SweepData(pd.DataFrame(), summary=pd.DataFrame(rows))


def test_variance_reduction_reaches_each_outcome():
    rule = VERDICTS.get("variance-reduction")
    params = {"reference": "none", "subject": ["mean", "std"]}
    status, summary, ev = rule(_variance_runs({"mean": 0.5, "std": 0.6}), params)
    assert status == "holds" and ev["reduces"] == 6
    status, summary, _ = rule(_variance_runs({"mean": 0.5, "std": 1.9}), params)
    assert status == "violated" and "std@" in summary
    status, _, _ = rule(_variance_runs({"mean": 0.5, "std": 1.0}, se=0.3), params)
    assert status == "inconclusive"
    # the log-ratio interval, hand-worked: L = log 0.5, se = sqrt(2) 0.02, z at 0.05 / 6 / 2
    from scipy.stats import norm

    z = norm.ppf(1 - 0.05 / 2 / 6)
    line = ev["ratio mean / none"].split(";")[0]
    lo = 0.5 * math.exp(-z * math.hypot(0.02, 0.02))
    assert f"[{lo:.2f}," in line


# ----------------------------------------------------------------------------- power
# For every shipped protocol: synthetic data with the runs its full budget expands to (labels,
# grid points, run counts as shipped) where the answer is known, one data set per outcome. A
# "holds" (or "violated") that cannot happen at the shipped run counts is a defect.


def _shipped_runs(name):
    p = load_protocol(find_protocols()[name])
    rows = []
    for i, spec in enumerate(expand(p, "full")):
        flat = store.flatten(spec.config.model_dump(mode="json"))
        rows.append({"run_id": f"r{i}", "status": "ok", "cfg.label": spec.label,
                     **{f"cfg.{k}": v for k, v in flat.items()}})  # fmt: skip
    return p, pd.DataFrame(rows)


def _score_col(params, summ):
    key = params.get("score", "auto")
    if key == "auto":
        key = "return"
    return {"return": "j_final", "eval_acc": "eval_acc_final", "eval_return": "eval_return"}[key]


def _with_scores(summ, col, values):
    out = summ.assign(**{col: values})
    if col == "j_final":
        out = out.assign(j_star=1.0)
    return out


def _alternating(n, scale):
    return scale * np.array([(-1) ** i * (1 + 0.1 * (i % 3)) for i in range(n)])


def _synthetic(p, summ, outcome):
    """SweepData for protocol ``p`` whose rule must answer ``outcome``."""
    rule, params = p.verdict.rule, p.verdict.params
    n = len(summ)
    seed_col = next(c for c in ("cfg.seed", "cfg.point_seed") if c in summ)
    seed = summ[seed_col].to_numpy(dtype=float)
    if rule in ("ratio-bound", "trpo-bound", "surrogate-bound"):
        steps = summ.loc[summ.index.repeat(3)].reset_index(drop=True)
        steps["step"] = np.tile(np.arange(3), n)
        bad = np.zeros(len(steps), bool)
        bad[4] = outcome == "violated"
        nan = np.nan if outcome == "inconclusive" else 0.0
        if rule == "ratio-bound":
            col = params.get("ratio", "exact_ratio")
            steps[f"{col}_max"] = 1 + steps["cfg.loss.eps_high"] - 0.01 + 0.05 * bad + nan
            steps[f"{col}_min"] = 1 - steps["cfg.loss.eps_low"] + 0.01 + nan
            steps["exact_frac_outside"] = 0.0
        elif rule == "trpo-bound":
            steps["bound_slack"], steps["true_gain"] = 0.1 - 0.2 * bad + nan, 0.1
        else:
            steps["true_gain"], steps["clipped_gain"] = 0.1, 0.05 + 0.1 * bad + nan
        return SweepData(steps, None, summ)
    if rule == "convergence":
        steps, its = [], []
        judged = summ[summ["cfg.epochs"] > 1]["run_id"].tolist()
        wrong = {"holds": 0, "violated": len(judged), "inconclusive": 3}[outcome]
        for _, r in summ.iterrows():
            rid = r["run_id"]
            k = judged.index(rid) if rid in judged else -1
            for e in range(20):
                loss = 0.0 if k < 0 else 0.05
                gap = 0.5 if 0 <= k < wrong else max(0.0, 0.5 - 0.1 * e)
                steps.append({"run_id": rid, "step": e, "iteration": e, "pg_loss": loss})
                its.append({"run_id": rid, "iteration": e, "gap": gap})
        return SweepData(pd.DataFrame(steps), pd.DataFrame(its), summ.assign(j_star=1.0))
    if rule == "best-setting":
        axis, claimed = params["axis"], params["claimed"]
        col = _score_col(params, summ)
        scale = 100.0 if col == "eval_return" else 0.1
        base = 2 * scale + 0.2 * scale * seed
        values = summ[axis].to_numpy()
        other = values != claimed
        winner = values == sorted(set(values) - {claimed})[0]
        if outcome == "holds":
            x = base + scale * (values == claimed)
        elif outcome == "violated":
            x = base + scale * winner
        else:
            x = base + other * _alternating(n, 0.3 * scale)
        return SweepData(pd.DataFrame(), None, _with_scores(summ, col, x))
    if rule in ("monotone-trend", "speed-and-instability"):
        axis = params["axis"]
        ranks = summ[axis].rank(method="dense").to_numpy() - 1
        if rule == "monotone-trend":
            col = _score_col(params, summ)
            sign = {"holds": 1.0, "violated": -1.0, "inconclusive": 0.0}[outcome]
            x = 0.3 + 0.1 * sign * ranks + 0.01 * seed + (sign == 0) * _alternating(n, 0.05)
            return SweepData(pd.DataFrame(), None, _with_scores(summ, col, x))
        its = []
        classic = "speed_target" in params
        for i, r in summ.iterrows():
            hit = 12 - 2 * ranks[i] if outcome != "violated" else 4 + 2 * ranks[i]
            dd = 0.02 * ranks[i] + 0.001 * seed[i] if outcome != "inconclusive" else 0.0
            for e in range(20):
                frac = 0.95 if e >= hit else 0.5
                frac -= dd if e == 19 else 0.0
                row = {"run_id": r["run_id"], "iteration": e}
                if classic:
                    row.update(episode_return=500 * frac, env_steps=1000.0 * (e + 1))
                else:
                    row.update(J=frac)
                its.append(row)
        extra = {} if classic else {"j_star": 1.0}
        return SweepData(pd.DataFrame(), pd.DataFrame(its), summ.assign(**extra))
    if rule == "improvement":
        col = _score_col(params, summ)
        scale = 100.0 if col == "eval_return" else 0.1
        better = (summ["cfg.label"] == params["better"]).to_numpy()
        sign = {"holds": 1.0, "violated": -1.0, "inconclusive": 0.0}[outcome]
        x = 3 * scale + sign * scale * better + 0.05 * scale * seed
        if outcome == "inconclusive":
            x = 3 * scale + 0.1 * scale * (seed % 2)
        return SweepData(pd.DataFrame(), None, _with_scores(summ, col, x))
    if rule == "cost":
        its = []
        for _, r in summ.iterrows():
            lab, z = r["cfg.label"], r["cfg.hidden"]
            unit = {"holds": (10, 30), "violated": (30, 10), "inconclusive": (10, 10)}[outcome]
            c = {params["cheaper"]: unit[0], params["than"]: unit[1]}.get(lab, 20) * z**0.5
            for i in range(6):
                upd = c * (1 + 0.05 * ((i % 3) - 1)) * 1e-3
                its.append({"run_id": r["run_id"], "iteration": i, "cfg.label": lab,
                            "cfg.hidden": z, "rollout_time": 0.01, "update_time": upd,
                            "env_steps_per_s": 1e5})  # fmt: skip
        batch = summ["cfg.label"] + "-" + summ["cfg.hidden"].astype(str)
        return SweepData(pd.DataFrame(), pd.DataFrame(its), summ.assign(batch=batch))
    if rule == "unbiased":
        subject = params.get("subject") or summ["cfg.label"].unique().tolist()
        is_subject = summ["cfg.label"].isin(subject).to_numpy()
        pval = np.full(n, 0.5)
        err = np.full(n, 0.01)
        noise = np.full(n, 0.005)
        first = np.flatnonzero(is_subject)[0]
        if outcome == "violated":
            pval[first], err[first] = 1e-9, 0.5
        if outcome == "inconclusive":
            noise[first] = 0.2
        out = summ.assign(p_bias=pval, p_direction=pval, rel_norm_error=err, dir_rel_error=err,
                          noise_rel=noise, fit_scale=1.0, cosine=0.99)  # fmt: skip
        return SweepData(pd.DataFrame(), None, out)
    if rule == "variance-reduction":
        col = params.get("measure", "grad_var_rel_dir")
        ref = (summ["cfg.label"] == params["reference"]).to_numpy()
        first_subject = np.flatnonzero(summ["cfg.label"].isin(params["subject"]))[0]
        v = np.where(ref, 2.0, 1.0)
        se = 0.02 * v
        if outcome == "violated":
            v[first_subject] = 4.0
        if outcome == "inconclusive":
            se[first_subject] = 2.0
        return SweepData(pd.DataFrame(), None, summ.assign(**{col: v, f"{col}_se": se}))
    if rule == "best-of-both":
        lab = summ["cfg.label"].to_numpy()
        hit = {params["fast"]: 5, params["stable"]: 40}
        fall = {params["fast"]: 0.1, params["stable"]: 0.0}
        sub = {"holds": (5, 0.0), "violated": (40, 0.0), "inconclusive": (5, 0.0)}[outcome]
        hit[params["subject"]], fall[params["subject"]] = sub
        its = []
        for i, rid in enumerate(summ["run_id"]):
            h, f = hit.get(lab[i], 20), fall.get(lab[i], 0.05)
            jit = (
                0.02 * ((seed[i] % 3) - 1)
                if outcome == "inconclusive" and lab[i] == params["subject"]
                else 0.0
            )
            for e in range(60):
                j = (0.95 if e >= h + seed[i] % 2 else 0.5) - (
                    f + jit + 0.01 * (outcome == "inconclusive") if e == 59 else 0
                )
                its.append({"run_id": rid, "iteration": e, "J": j})
        return SweepData(pd.DataFrame(), pd.DataFrame(its), summ.assign(j_star=1.0))
    if rule == "interior-optimum":
        axis = params["axis"]
        values = sorted(summ[axis].unique())
        col = _score_col(params, summ)
        v = summ[axis].to_numpy()
        base = 0.5 + 0.01 * seed
        if outcome == "holds":
            x = base + 0.1 * (v == values[1])
        elif outcome == "violated":
            x = base + 0.1 * (v == values[-1])
        else:
            x = base + (v == values[1]) * _alternating(n, 0.05)
        return SweepData(pd.DataFrame(), None, _with_scores(summ, col, x))
    if rule == "stationary":
        subject = summ["cfg.label"].isin(params["subject"]).to_numpy()
        end = np.where(subject & (outcome == "violated"), 0.96, 1.0)
        moving = subject & (outcome == "inconclusive")
        its = []
        for i, rid in enumerate(summ["run_id"]):
            for e in range(100):
                j = end[i] - 0.5 * 0.9**e - (0.001 * (100 - e) if moving[i] else 0.0)
                its.append({"run_id": rid, "iteration": e, "J": j})
        out = summ.assign(j_star=1.0, j_final=end, grad_norm_init=1.0, grad_norm_final=1e-4)
        return SweepData(pd.DataFrame(), pd.DataFrame(its), out)
    raise AssertionError(f"no synthetic data for rule {rule!r}")


JUDGED = sorted(find_protocols())


@pytest.mark.parametrize("name", JUDGED)
@pytest.mark.parametrize("outcome", ["holds", "violated", "inconclusive"])
def test_every_outcome_is_reachable_at_the_shipped_run_counts(name, outcome):
    p, summ = _shipped_runs(name)
    data = _synthetic(p, summ, outcome)
    status, summary, _ = VERDICTS.get(p.verdict.rule)(data, p.verdict.params)
    assert status == outcome, f"{name}: {summary}"


def test_stationary_tells_a_saturated_wrong_answer_from_a_local_optimum():
    """The end points grpo-stationary measured: std-scaled GRPO stops at J/J* = 0.9617 with a
    vanishing gradient (the better answer's probability -> 0), the unbiased control at the
    optimum; a run still drifting is undetermined, and a failing control makes it inconclusive."""
    rule = VERDICTS.get("stationary")

    def runs(spec):  # label -> (J/J* at the end, grad ratio, drift per iteration)
        its, summ = [], []
        for label, (end, ratio, drift) in spec.items():
            for seed in range(3):
                rid = f"{label}-{seed}"
                for e in range(50):
                    its.append({"run_id": rid, "iteration": e,
                                "J": end - 0.3 * 0.8**e - drift * (50 - e)})  # fmt: skip
                summ.append({"run_id": rid, "cfg.label": label, "status": "ok", "j_star": 1.0,
                             "j_final": end, "grad_norm_init": 2.0,
                             "grad_norm_final": 2.0 * ratio})  # fmt: skip
        return SweepData(pd.DataFrame(), pd.DataFrame(its), pd.DataFrame(summ))

    params = {"subject": ["std"], "reference": ["rloo"]}
    status, summary, ev = rule(runs({"std": (0.9617, 1e-3, 0), "rloo": (0.9996, 4e-3, 0)}), params)
    assert status == "violated" and "std (3/3)" in summary
    assert "counterexample 3/3 (suboptimal 3)" in ev["label std"]
    status, _, ev = rule(runs({"std": (0.9996, 1e-3, 0), "rloo": (0.9996, 4e-3, 0)}), params)
    assert status == "holds"
    # a KL-pulled run: J flat but the gradient large -> "gradient"
    status, _, ev = rule(runs({"std": (0.9996, 0.2, 0), "rloo": (0.9996, 4e-3, 0)}), params)
    assert status == "violated" and "(gradient 3)" in ev["label std"]
    status, summary, _ = rule(runs({"std": (0.96, 1e-3, 1e-3), "rloo": (1.0, 4e-3, 0)}), params)
    assert summary.startswith("no signal: every subject run was still moving")
    status, summary, _ = rule(runs({"std": (0.96, 1e-3, 0), "rloo": (0.9, 0.5, 0)}), params)
    assert status == "inconclusive" and "controls ['rloo']" in summary


def _c1_runs(effect, seeds=6):
    """Paired runs over c1 in {0.1, 0.5, 2.0}: J/J* = 0.5 + 0.02 seed + effect(c1, seed)."""
    rows = []
    for c1 in (0.1, 0.5, 2.0):
        for s in range(seeds):
            rows.append({"run_id": f"{c1}-{s}", "cfg.loss.vf_coef": c1, "cfg.seed": s,
                         "status": "ok", "j_final": 0.5 + 0.02 * s + effect(c1, s),
                         "j_star": 1.0})  # fmt: skip
    return SweepData(pd.DataFrame(), summary=pd.DataFrame(rows))


def test_interior_optimum_reaches_each_outcome():
    rule = VERDICTS.get("interior-optimum")
    params = {"axis": "cfg.loss.vf_coef", "reps": 500}
    noise = lambda s: 0.002 * ((s % 3) - 1)  # noqa: E731
    status, summary, _ = rule(_c1_runs(lambda c, s: 0.1 * (c == 0.5) + noise(s)), params)
    assert status == "holds" and "[0.5] beats both ends" in summary
    status, summary, _ = rule(_c1_runs(lambda c, s: 0.1 * (c == 2.0) + noise(s)), params)
    assert status == "violated" and "[2.0]" in summary
    # monotone: 2.0 > 0.5 > 0.1, the top end beats the interior -> violated; tied -> inconclusive
    wobble = lambda c, s: 0.05 * (-1) ** s * (c == 0.5)  # noqa: E731
    assert rule(_c1_runs(wobble), params)[0] == "inconclusive"


def test_best_of_both_reaches_each_outcome_and_names_the_half():
    rule = VERDICTS.get("best-of-both")
    params = {"subject": "adaptive", "fast": "high", "stable": "low", "reps": 500}

    def data(spec, seeds=8):  # label -> (hit iteration, drawdown, drawdown jitter over seeds)
        its, summ = [], []
        for label, (hit, dd, jit) in spec.items():
            for s in range(seeds):
                rid = f"{label}-{s}"
                fall = dd + jit * ((s % 3) - 1)
                for e in range(30):
                    j = (0.95 if e >= hit + (s % 2) else 0.5) - (fall if e == 29 else 0)
                    its.append({"run_id": rid, "iteration": e, "J": j})
                summ.append({"run_id": rid, "cfg.label": label, "cfg.seed": s, "status": "ok",
                             "j_star": 1.0, "j_final": its[-1]["J"]})  # fmt: skip
        return SweepData(pd.DataFrame(), pd.DataFrame(its), pd.DataFrame(summ))

    best = {"high": (5, 0.1, 0), "low": (20, 0.0, 0), "adaptive": (5, 0.0, 0)}
    assert rule(data(best), params)[0] == "holds"
    slow = {**best, "adaptive": (15, 0.0, 0)}
    status, summary, _ = rule(data(slow), params)
    assert status == "violated" and "the speed half fails" in summary
    shaky = {**best, "adaptive": (5, 0.1, 0)}
    status, summary, _ = rule(data(shaky), params)
    assert status == "violated" and "the stability half fails" in summary
    unsure = {**best, "adaptive": (5, 0.01, 0.02)}  # mean 0.01 +- noise straddles the margin
    assert rule(data(unsure), params)[0] == "inconclusive"


def test_classic_epsilon_sweep_holds_eps_constant_below_a_ceiling():
    """Item 8: the swept eps is the clip of every update (not annealed to 0) on a task whose
    returns the runs do not cap (Acrobot-v1: a solved policy scores about -60 to -100)."""
    p = load_protocol(find_protocols()["classic-epsilon-sweep"])
    runs = expand(p, "full")
    assert {r.config.anneal_clip for r in runs} == {False}
    assert {r.config.env_id for r in runs} == {"Acrobot-v1"}
    assert {r.config.clip_coef for r in runs} == {0.1, 0.2, 0.3}


def test_cost_rule_judges_optimiser_work_beside_wall_time():
    """Item 1: counted update FLOPs per env step are a second half of the cost verdict; counted
    iterations carry NaN timings (the counter slows them) and only the work half reads them."""
    rule = VERDICTS.get("cost")
    params = {"cheaper": "grpo", "than": "trpo", "reps": 500}
    cheap = lambda lab, z: (10 if lab == "grpo" else 30) * z**0.5  # noqa: E731

    def with_flops(flops_of):
        data = _cost_iterations(cheap)
        it = data.iterations.copy()
        it["env_steps"] = 1000.0 * (it["iteration"] + 1)  # cumulative, 1000 per iteration
        counted = it["iteration"] % 2 == 0
        f = [
            flops_of(lab, z) * 1000
            for lab, z in zip(it["cfg.label"], it["cfg.hidden"], strict=True)
        ]
        it["update_flops"] = np.where(counted, f, np.nan)
        it.loc[counted, "update_time"] = np.nan
        return SweepData(data.steps, it, data.summary)

    # work per env step: GRPO 6 z^2 FLOPs, TRPO 30 z^2 (5x, same growth) -> both halves hold
    status, summary, ev = rule(
        with_flops(lambda lab, z: (6 if lab == "grpo" else 30) * z**2), params
    )
    assert status == "holds" and ev["work_half"] == "holds", summary
    assert ev["update_flops_per_step_ratio_ci"]["16"][0] == pytest.approx(5.0)
    assert ev["update_flops_per_step_grpo_at_64"] == pytest.approx(6 * 64**2)
    assert ev["update_flops_per_step_growth_exponent_trpo"] == pytest.approx(2.0)
    # cheaper in wall time but more work: the work half fails the claim
    status, summary, ev = rule(
        with_flops(lambda lab, z: (60 if lab == "grpo" else 30) * z**2), params
    )
    assert (
        status == "violated" and ev["wall_time_half"] == "holds" and ev["work_half"] == "violated"
    )
