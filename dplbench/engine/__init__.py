"""Method interface, training engine, LR schedule, GPA, seeding, on-disk feature caches, and the pieces method
adapters share (prompt learners, the text-prompted and deep-prompted method bases, frozen teachers).

The modules that need torch (method, trainer, prompts, cache, teachers, text_prompted, deep_prompted) are imported
lazily by the code that uses them, so importing this package stays cheap.
"""
