"""Published reference numbers shipped with dplbench (installed as the ``dplbench.reference`` package data)."""
