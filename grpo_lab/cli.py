"""The ``grpo-lab`` command line.

    grpo-lab --help          what the toolkit does
    grpo-lab list            the protocols and the claims they test
    grpo-lab check P         validate a protocol file (schema and every resolved run; nothing runs)
    grpo-lab run [P...]      run protocols (default: all of protocols/), store runs, write verdicts
    grpo-lab report DIR      the verdict table of a results directory (report.md)
    grpo-lab presets         the named loss recipes and their settings
    grpo-lab demo            a tiny loss demo: every preset on one batch, then a ratio audit

User errors (a bad protocol, an unknown name, a missing directory) print a message and exit 2.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import typer
from rich.console import Console
from rich.table import Table

from grpo_lab import __version__
from grpo_lab.advantages import group_advantages
from grpo_lab.losses import PRESETS, LossConfig, policy_loss, preset, total_loss
from grpo_lab.protocols import BUDGETS, Protocol, ProtocolError, find_protocols, load_protocol
from grpo_lab.report import write_report

app = typer.Typer(
    help="grpo_lab: test the claims of GRPO, PPO and TRPO theory by experiment.",
    no_args_is_help=True,
    add_completion=False,
)
console = Console()


def _version(value: bool) -> None:
    if value:
        console.print(f"grpo_lab {__version__} (torch {torch.__version__})")
        raise typer.Exit()


@app.callback()
def main(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """grpo_lab: test the claims of GRPO, PPO and TRPO theory by experiment."""


@app.command()
def presets() -> None:
    """List the named loss recipes (grpo, dr_grpo, dapo, gspo, ppo) and their settings."""
    names = PRESETS.names()
    table = Table(title="loss presets (grpo_lab.losses.PRESETS)")
    table.add_column("field")
    for name in names:
        table.add_column(name)
    for field in LossConfig.model_fields:
        table.add_row(field, *(str(getattr(preset(n), field)) for n in names))
    console.print(table)


def _demo_batch(seed: int) -> dict[str, torch.Tensor]:
    """G = 4 completions of one prompt, up to T = 5 tokens, binary rewards."""
    g = torch.Generator().manual_seed(seed)
    b, t = 4, 5
    old_logp = -torch.rand(b, t, generator=g) * 2.0  # (B, T)
    logp = old_logp + 0.3 * torch.randn(b, t, generator=g)  # a policy that has moved a little
    ref_logp = old_logp + 0.1 * torch.randn(b, t, generator=g)
    lengths = torch.tensor([5, 3, 4, 2])
    mask = torch.arange(t)[None, :] < lengths[:, None]  # (B, T)
    rewards = torch.tensor([1.0, 0.0, 1.0, 0.0])
    return {"logp": logp, "old_logp": old_logp, "ref_logp": ref_logp, "mask": mask, "R": rewards}


def _ratio_audit(eps: float, lr: float, steps: int, seed: int) -> tuple[float, float]:
    """Several Adam steps on the clipped loss of a 6-action softmax policy; max |r - 1| after."""
    g = torch.Generator().manual_seed(seed)
    n_actions, n = 6, 64
    old_logits = torch.randn(n_actions, generator=g)
    actions = torch.multinomial(old_logits.softmax(-1), n, replacement=True, generator=g)  # (N,)
    adv = torch.randn(n, generator=g)  # (N,)
    old_logp = old_logits.log_softmax(-1)[actions][:, None]  # (N, 1)
    logits = old_logits.clone().requires_grad_(True)
    opt = torch.optim.Adam([logits], lr=lr)
    mask = torch.ones(n, 1, dtype=torch.bool)
    for _ in range(steps):
        logp = logits.log_softmax(-1)[actions][:, None]
        loss, _ = policy_loss(logp, old_logp, adv, mask, eps_low=eps)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        r_all = (logits.log_softmax(-1) - old_logits.log_softmax(-1)).exp()  # every action
    return float(r_all.max()), float(r_all.min())


@app.command()
def demo(seed: int = typer.Option(0, help="Seed of the demo batch.")) -> None:
    """A tiny loss demo: each preset on one group of 4 completions, then a ratio audit."""
    d = _demo_batch(seed)
    adv = group_advantages(d["R"], group_size=4)
    console.print(
        f"rewards {d['R'].tolist()} -> group advantages {[round(a, 3) for a in adv.tolist()]}"
    )
    table = Table(title="one batch, every preset (loss to minimise)")
    for col in ("preset", "loss", "pg_loss", "kl_ref", "ratio_max", "clip_frac", "approx_kl"):
        table.add_column(col, justify="right" if col != "preset" else "left")
    for name in PRESETS:
        cfg = preset(name)
        if cfg.advantage != "group":
            continue  # ppo needs a critic: shown by later issues on MDPs
        a = group_advantages(d["R"], 4, baseline=cfg.adv_baseline, scale=cfg.adv_scale)
        loss, m = total_loss(cfg, d["logp"], d["old_logp"], a, d["mask"], ref_logp=d["ref_logp"])
        table.add_row(
            name,
            f"{float(loss):+.4f}",
            f"{m['pg_loss']:+.4f}",
            f"{m.get('kl_ref', 0.0):.4f}",
            f"{m['ratio_max']:.3f}",
            f"{m['clip_frac']:.2f}",
            f"{m['approx_kl']:.4f}",
        )
    console.print(table)

    eps, lr, steps = 0.2, 0.1, 20
    r_max, r_min = _ratio_audit(eps, lr, steps, seed)
    holds = (1 - eps) <= r_min and r_max <= 1 + eps
    console.print(
        f"ratio audit: {steps} Adam steps (lr {lr}) on the clipped loss, eps {eps}: "
        f"max r = {r_max:.3f}, min r = {r_min:.3f} over all actions; the seed's bound "
        f"|r - 1| <= eps {'holds' if holds else 'is violated'} here."
    )


def _fail(message: str) -> typer.Exit:
    console.print(f"[red]error:[/] {message}")
    return typer.Exit(code=2)


def _protocol(name_or_path: str) -> Protocol:
    """A protocol by name (one of protocols/*.toml) or by path to a TOML file."""
    if name_or_path.endswith(".toml") or Path(name_or_path).is_file():
        return load_protocol(name_or_path)
    known = find_protocols()
    if name_or_path not in known:
        raise ProtocolError(f"unknown protocol {name_or_path!r}; choose one of {sorted(known)}")
    return load_protocol(known[name_or_path])


def _parse_set(items: list[str]) -> dict[str, object]:
    out: dict[str, object] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ProtocolError(f"--set expects key=value, got {item!r}")
        try:
            out[key] = json.loads(raw)
        except json.JSONDecodeError:
            out[key] = raw
    return out


@app.command("list")
def list_protocols() -> None:
    """List the protocols of protocols/ with the seed's claim each one tests."""
    table = Table(title="protocols")
    for col in ("protocol", "suite", "algorithms", "verdict rule", "claim"):
        table.add_column(col)
    for name, path in find_protocols().items():
        p = load_protocol(path)
        algos = ", ".join(a.label or a.name for a in p.algorithms)
        table.add_row(name, p.suite, algos, p.verdict.rule, p.claim)
    console.print(table)


@app.command()
def check(protocol: str = typer.Argument(..., help="Protocol name or TOML file.")) -> None:
    """Validate a protocol (schema and every resolved run of both budgets); nothing runs."""
    try:
        p = _protocol(protocol)
    except ProtocolError as e:
        raise _fail(str(e)) from None
    from grpo_lab.protocols import expand, expand_tuning

    def size(b: str) -> str:
        tune = len(expand_tuning(p, b))
        return f"{b}: {len(expand(p, b))} runs" + (f" (+ {tune} tuning runs)" if tune else "")

    sizes = ", ".join(size(b) for b in BUDGETS)
    console.print(f"[green]ok[/] {p.name}: {sizes}")


@app.command()
def run(
    protocols: list[str] = typer.Argument(None, help="Protocol names or files (default: all)."),
    quick: bool = typer.Option(False, "--quick", help="Use each protocol's quick budget."),
    out: Path = typer.Option(Path("results"), "--out", help="Results directory."),
    backend: str = typer.Option(
        "local", "--backend", help="Where runs execute: local (processes) or ray (Ray tasks)."
    ),
    address: str | None = typer.Option(
        None,
        "--address",
        help="The Ray cluster for --backend ray, e.g. auto or ray://host:10001 (--out must then "
        "be a filesystem every node shares). Default: a local Ray instance of --workers CPUs.",
    ),
    workers: int = typer.Option(
        1, "--workers", help="Processes (local), or CPUs of the local Ray instance (ray)."
    ),
    set_: list[str] = typer.Option(
        [], "--set", help="Override a config field for every run: key=value (JSON value)."
    ),
    batch_size: int = typer.Option(256, "--batch-size", help="Most runs per batched program."),
    suite: str = typer.Option(
        "default", "--suite", help="Without protocol names: the suite to run (default, lm)."
    ),
    figures: bool = typer.Option(
        True, "--figures/--no-figures", help="Draw the report's figures (slower) or not."
    ),
) -> None:
    """Run protocols (resuming completed runs), write verdicts and the report."""
    from contextlib import ExitStack

    from rich.markup import escape  # messages such as "pip install 'grpo_lab[ray]'" keep [...]

    from grpo_lab.sweep import check_backend, ray_session, run_protocol

    try:
        check_backend(backend, workers, address)
        names = protocols or list(find_protocols(suite=suite))
        if not names:
            suites = sorted({load_protocol(f).suite for f in find_protocols().values()})
            raise ProtocolError(f"no protocol in suite {suite!r}; suites: {suites}")
        loaded = [_protocol(n) for n in names]
        overrides = _parse_set(set_)
        budget = "quick" if quick else "full"
        for p in loaded:  # every override must resolve for every protocol before anything runs
            from grpo_lab.protocols import expand

            expand(p, budget, overrides)
    except (ProtocolError, ValueError, ImportError) as e:
        raise _fail(escape(str(e))) from None
    results = []
    with ExitStack() as stack:
        if backend == "ray":  # one Ray instance (or cluster connection) serves every protocol
            try:
                stack.enter_context(ray_session(address, workers))
            except ConnectionError as e:  # nothing to connect to at --address
                raise _fail(escape(f"cannot connect to Ray at {address!r}: {e}")) from None
        for p in loaded:
            try:
                r = run_protocol(
                    p, out, budget=budget, overrides=overrides, backend=backend, workers=workers,
                    address=address, batch_size=batch_size,
                )  # fmt: skip
            except ValueError as e:
                raise _fail(escape(str(e))) from None
            results.append(r)
            console.print(
                f"{p.name}: [bold]{r.verdict.status}[/] ({r.ran} runs now, {r.skipped} resumed) "
                f"- {r.verdict.summary}"
            )
    path = write_report(out, figures=figures)
    console.print(f"report: {path}")


@app.command()
def report(out: Path = typer.Argument(..., help="Results directory of `grpo-lab run`.")) -> None:
    """Write DIR/report.md from the verdicts stored under DIR and print the verdict table."""
    try:
        path = write_report(out)
    except ValueError as e:
        raise _fail(str(e)) from None
    console.print(path.read_text())


if __name__ == "__main__":  # python -m grpo_lab.cli
    app()
