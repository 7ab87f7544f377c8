"""Test-session settings.

torch's intra-op thread pool makes the tiny tensors of the tabular lab slower, not faster: with two
threads on a busy 2-core machine a (1, 11, 3) log_softmax measured 2.2 ms against 7 us on one.
The suite runs on one thread; benchmarks state their own setting.
"""

import torch

torch.set_num_threads(1)

GRPO_DAPO = '[[algorithms]]\nname = "grpo"\nconfig = { loss = "dapo", epochs = 2 }\n'


def protocol_text(
    name: str = "tiny",
    grid: str = "lr = [0.1, 0.5]\nseed = [0, 1, 2]",
    algorithms: str = GRPO_DAPO,
    rule: str = "ratio-bound",
    claim: str = "a claim",
    quick: int = 3,
    full: int = 4,
) -> str:
    """A small protocol on a 3-armed bandit for tests (the default: 2 lr x 3 seeds of GRPO)."""
    return (
        f'name = "{name}"\nclaim = "{claim}"\n[env]\nname = "bandit"\nkwargs = {{ k = 3, seed = 0 }}\n'
        f"{algorithms}[grid]\n{grid}\n[budget.quick]\niterations = {quick}\n"
        f'[budget.full]\niterations = {full}\n[verdict]\nrule = "{rule}"\n'
    )


TINY = protocol_text()
