"""Issuing codes: reading a request (requests, entities), the channels it goes to (channels), the per-action
configuration (action_config), the codes themselves (codes), and every limit that can refuse it (limits over the
atomic counters of counters, and the channel budgets of safe_mode).

Where a generate is refused for the daily limit: limits.generate_counters names the counter, counters.bump counts
it atomically, limits.explain_refusal says why to the console. Imports delivery, db and the foundation only.
"""
