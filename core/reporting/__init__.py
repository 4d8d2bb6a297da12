"""Reporting: the dashboard figures (dashboards: usage, delivery, rate limits, why a user is refused), the rollup
tables they read (rollups) and the security events (security_events). Read-only: lifting a limit is
core.admin.unblock. Imports issuing, delivery, db and the foundation; never admin.
"""
