"""Method adapters, one module each. A module registers its adapter with
``@register_method("name", description="...")``; dplbench discovers it without importing it."""
