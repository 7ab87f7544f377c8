"""Environments: batched tabular MDPs with exact evaluation (``tabular``); later classic control
(``classic``) and language-model tasks (``lm_tasks``)."""
