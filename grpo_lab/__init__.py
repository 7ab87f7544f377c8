"""grpo_lab: put the theory of GRPO, PPO and TRPO under experiment.

One small function per equation (``advantages``, ``losses``), registries keyed by name so a
sweep axis is a string, and (in later modules) exact tabular MDPs, classic control and small
language models on which the claims of the seed document are measured.
"""

__version__ = "0.1.0"
