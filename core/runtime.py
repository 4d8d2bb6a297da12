"""What the engine needs at hand: settings, database, keys, clock, gateways and cached configuration."""
from __future__ import annotations

from sqlalchemy import Engine
from sqlmodel import Session

from core.cache import TtlValue
from core.clients import ClientAuthenticator
from core.clock import Clock, utcnow
from core.config import Settings, get_settings
from core.crypto import CodeKeys, SecretBox, load_master_key
from core.db import READ_ONLY, make_engine, schema_lock, upgrade
from core.enums import Action, Channel
from core.gateway_configs import GatewayRow, build_gateway, load_gateway_rows, parse_assignments
from core.gateways import Gateway
from core.gateways.outbox import OutboxGateway
from core.groupcommit import writer_for
from core.otpconfig import OtpConfig, load_action_configs, seed_action_configs
from core.template_versions import ActiveTemplates, load_active_templates


def prepare_database(engine: Engine) -> None:
    """Migrate to the newest schema and seed the default configuration: safe at every start, however many
    workers or hosts start together (core.db.schema_lock: the seed's read-then-insert is under it too)."""
    with schema_lock(engine):
        upgrade(engine)
        with engine.begin() as conn:
            seed_action_configs(conn)


def build_gateways(settings: Settings) -> dict[Channel, Gateway | None]:
    """The gateway for each channel as the settings name it; None leaves the channel unconfigured (7001)."""
    outbox = OutboxGateway()
    chosen: dict[Channel, Gateway | None] = {}
    for channel in Channel:
        name = getattr(settings, f"gateway_{channel.value.lower()}")
        chosen[channel] = outbox if name == "outbox" else None
    return chosen


class Runtime:
    """One per process (the API app, the console, a test); cheap to read from on every request."""

    def __init__(self, settings: Settings | None = None, *, clock: Clock = utcnow, engine: Engine | None = None,
                 gateways: dict[Channel, Gateway | None] | None = None, prepare: bool = True) -> None:
        self.settings = settings or get_settings()
        self.db = engine or make_engine(self.settings.database_url)
        if prepare:
            prepare_database(self.db)
        self.read_db = self.db.execution_options(**{READ_ONLY: True})
        self.writer = writer_for(self.db)  # every engine write goes through it (group commit on SQLite)
        master = load_master_key(self.settings)
        self.keys = CodeKeys.from_master(master)
        self.box = SecretBox.from_master(master)
        self.clock = clock
        self.gateways = gateways if gateways is not None else build_gateways(self.settings)
        self.outbox = OutboxGateway()
        self._configs: TtlValue[dict[Action, OtpConfig]] = TtlValue(self._load_configs, self.settings.cache_seconds)
        self._templates: TtlValue[ActiveTemplates] = TtlValue(self._load_templates, self.settings.cache_seconds)
        self._gateway_rows: TtlValue[dict[str, GatewayRow]] = TtlValue(self._load_gateway_rows,
                                                                       self.settings.cache_seconds)
        self._built: dict[tuple[int, object], Gateway | None] = {}
        self.auth = ClientAuthenticator(self.read_db, self.settings.auth_cache_seconds)

    def _load_configs(self) -> dict[Action, OtpConfig]:
        with self.read_db.connect() as conn:
            return load_action_configs(conn)

    def _load_templates(self) -> ActiveTemplates:
        with self.read_db.connect() as conn:
            return load_active_templates(conn)

    def _load_gateway_rows(self) -> dict[str, GatewayRow]:
        with self.read_db.connect() as conn:
            return load_gateway_rows(conn)

    def gateway_rows(self) -> dict[str, GatewayRow]:
        return self._gateway_rows.get()

    def gateway_for(self, action: Action, channel: Channel) -> Gateway | None:
        """The action's chosen gateway for channel, else the channel's default one, else the settings' choice."""
        rows = self.gateway_rows()
        if rows:
            name = parse_assignments(self.config_for(action).gateways).get(channel)
            row = rows.get(name) if name else None
            if row is None or row.channel is not channel:
                row = next((r for r in rows.values() if r.channel is channel and r.is_default), None)
            if row is not None:
                key = (row.id, row.updated_at)
                if key not in self._built:
                    self._built[key] = build_gateway(row, self.box, production=not self.settings.is_development)
                return self._built[key]
        return self.gateways.get(channel)

    def config_for(self, action: Action) -> OtpConfig:
        configs = self._configs.get()
        if action not in configs:  # a row deleted by hand: re-seed rather than fail every request
            with self.writer.within() as conn:
                seed_action_configs(conn)
                configs = load_action_configs(conn)
            self._configs.invalidate()
        return configs[action]

    def active_configs(self) -> dict[Action, OtpConfig]:
        return self._configs.get()

    def active_templates(self) -> ActiveTemplates:
        return self._templates.get()

    def configuration_changed(self) -> None:
        """Call after saving configuration, templates or gateways, so this process uses them at once."""
        self._configs.invalidate()
        self._templates.invalidate()
        self._gateway_rows.invalidate()
        self._built.clear()

    def session(self) -> Session:
        return Session(self.db)
