"""Protocol definitions (YAML files in this package, discovered by dplbench)."""
