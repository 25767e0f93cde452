"""Experiments: Optuna hyperparameter sweeps (`sweep.py`), method comparison (`compare.py`), plots."""
