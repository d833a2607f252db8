"""Benchmarks of dbevents against bare SQLAlchemy, the raw driver and peer libraries.

Run them with ``./dev bench`` (``python -m benchmarks``); see ``docs/benchmarks.md``.
"""
