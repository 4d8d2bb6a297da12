"""The OTP engine, independent of any face (API, console, CLI): issuing, sending and validating codes, and the
administration and reporting around them.

Layers, top to bottom (setup.cfg's import-linter contracts check them; a module imports only its own package
and the layers below):

    services/   the operations the faces call: generate, validate, dry run, failover, receipts, console actions
    runtime.py  what every operation needs at hand (settings, database, keys, gateways, cached configuration)
    admin/ | reporting/   staff, API clients, audit, template approval | dashboard figures and rollups
    issuing/    requests, entities, codes, limits and counters, safe mode, per-action configuration
    delivery/   templates, messages, dispatch, gateway settings and the gateways themselves
    db/         engine set-up and migrations, the group-commit writer, prepared statements, the tables
    foundation  settings, clock, enums, errors, crypto, cache, metrics, faults, net, linebreaks, histogram

core never imports FastAPI, Starlette, uvicorn, Streamlit or a face.
"""
