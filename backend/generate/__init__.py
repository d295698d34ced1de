"""LLM-REDIAL's dialogue generator (Liang et al., 2024, §2): behaviour data -> user-centric dialogues.

profiles (App. B) -> goals and templates (§2.4) -> LLM writing (§2.5.1) -> filters (§2.5.2),
driven by :func:`backend.generate.pipeline.generate` and ``crs data generate``.
"""
