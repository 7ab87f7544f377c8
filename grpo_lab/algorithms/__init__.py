"""Algorithms built from the loss functions: GRPO (grpo.py), PPO (ppo.py), TRPO (trpo.py)."""
