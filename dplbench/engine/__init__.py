"""Method interface, training engine, LR schedule, GPA, seeding and on-disk feature caches.

Only :mod:`dplbench.engine.method`, :mod:`.trainer`, :mod:`.prompts` and :mod:`.cache` need torch; they are
imported lazily by the code that uses them, so importing this package stays cheap.
"""
