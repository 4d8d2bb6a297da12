"""Delivering a code: the templates (sandboxed Jinja, checks, built-ins), which template wins and the rendered
message (messages, active_templates), sending to several gateways at once (dispatch), the configured gateways
(gateway_settings) and the gateways themselves (gateways/: SMS, email, voice, WhatsApp, Zalo, the outbox).

Imports db and the foundation only: delivery never decides whether a code may be sent (that is issuing).
"""
