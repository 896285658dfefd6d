"""Hostile adapters: each fails in a way that must never turn a run green or take it down.

Run by tests/test_fail_closed.py, alone and all together with one correct adapter
(``toy_rope:rope_adapter``).  The modules that fail at import are separate
(``crash_at_import``, ``hang_at_import``); everything else is in ``adapters``.
"""
