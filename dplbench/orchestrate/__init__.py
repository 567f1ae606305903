"""Orchestration: Ray Tune runner, MLflow mirror, grid / Optuna sweeps.

Importing this package is cheap (``settings`` only); Ray, MLflow and Optuna are imported inside the functions of
``runner``, ``tracking`` and ``sweep``.
"""
