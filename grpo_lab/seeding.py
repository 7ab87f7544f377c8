"""Seeds: one way to derive a generator seed, and one table of named random streams.

Every random number of a run comes from a generator seeded with

    derive_seed(seed, index, stream)      chained SplitMix64 (Steele, Lea & Flood 2014)

where ``seed`` is the configuration's seed (``cfg.seed``, or ``point_seed`` for a gradient
experiment's policy point), ``index`` is the iteration (or the layer, the environment, the batch)
and ``stream`` is one of the named streams below. A configuration's numbers then depend on its
own seed only, never on its batch-mates, so a batch of C runs equals C runs alone.

Stream numbers are unique within a family; across families the same number may serve another
purpose (the runs never share a seed stream), which is why each has a name here. Their values
are those the code used before they had names, so every stored run keeps its numbers. One
exception is not a SplitMix64 stream: the tabular PPO critic's initial weights come from
``numpy.random.SeedSequence([seed, PPO_CRITIC_INIT])`` (kept so stored runs reproduce).
"""

from __future__ import annotations

import torch

_MASK64 = (1 << 64) - 1

# tabular GRPO / PPO / TRPO (algorithms/grpo.py, ppo.py, trpo.py)
SAMPLING = 0  # the episodes of iteration i
MINIBATCH = 1  # the minibatch order of iteration i
PPO_CRITIC_INIT = 2  # tabular PPO's MLP critic initial weights (NumPy SeedSequence, see above)
# gradient experiments (algorithms/gradient.py)
GRADIENT_SAMPLES = 2  # the episodes of estimate batch b
GRADIENT_POINT = 3  # the policy point theta drawn from point_seed
# classic control (algorithms/classic*.py, policies/mlp.py)
CLASSIC_ROLLOUT = 0  # action uniforms of update u; also the env reset seeds of env e (index e)
CLASSIC_GROUP_RESET = 1  # classic GRPO: the reset seed of each group of iteration i
CLASSIC_GRPO_MINIBATCH = 2  # classic GRPO: minibatch order
CLASSIC_CRITIC_BATCHES = 2  # classic TRPO: the critic's minibatch order
CLASSIC_EVAL_RESET = 5  # the reset seeds of evaluation episodes
CLASSIC_PPO_EPOCH = 100  # classic PPO: minibatch order of epoch e is stream 100 + e
MLP_INIT = 7  # BatchedMLP layer i's orthogonal initialisation (index i)
# language models (algorithms/grpo_lm.py)
LM_PROMPTS = 0  # the prompts of iteration i
LM_SHARDS = 10  # rollout shard s samples from stream 10 + s
LM_SFT = 99  # the supervised warm start's batches

STREAMS = {
    name: value
    for name, value in dict(globals()).items()
    if name.isupper() and not name.startswith("_") and isinstance(value, int)
}


def _splitmix64(x: int) -> int:
    """One step of SplitMix64 (Steele, Lea & Flood 2014): a bijective 64-bit mixer."""
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def derive_seed(seed: int, iteration: int, stream: int = 0) -> int:
    """A 63-bit seed mixed from (seed, iteration, stream) by chained SplitMix64 steps: distinct
    inputs give unrelated generator seeds (no overlap between seed s at iteration i+1 and seed
    s+1 at iteration i, as a plain sum would give)."""
    x = _splitmix64(int(seed) & _MASK64)
    x = _splitmix64(x ^ (int(iteration) & _MASK64))
    x = _splitmix64(x ^ (int(stream) & _MASK64))
    return x >> 1


def iteration_generators(
    seeds: list[int], iteration: int, stream: int = SAMPLING, device: str = "cpu"
) -> list[torch.Generator]:
    """One generator per configuration for one iteration, seeded with
    ``derive_seed(seed_c, iteration, stream)`` (``stream``: a name of this module).

    A configuration's random numbers then depend on its own seed and the iteration only, not on the
    other configurations of a batch nor on how many numbers earlier iterations drew: a batched run
    and C one-config runs sample identical episodes.
    """
    return [
        torch.Generator(device=device).manual_seed(derive_seed(s, iteration, stream)) for s in seeds
    ]
