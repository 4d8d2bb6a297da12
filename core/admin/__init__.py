"""Administering the service: staff and their roles (staff, console_sessions), API clients and their OAuth tokens
(clients, tokens), the audit log (audit), template versions and four-eyes approval (template_versions), and the
staff-made changes to action configuration, gateways and limits (action_configs, gateways, gateway_forms, unblock).

Every change here is audited in the same transaction. Imports issuing, delivery, db and the foundation.
"""
