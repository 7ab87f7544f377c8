"""Policies: tabular softmax and MLP over finite states (tabular.py); causal LMs arrive later."""
