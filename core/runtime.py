"""What the engine needs at hand: settings, database, keys, clock, gateways and cached configuration."""
from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from sqlalchemy import Engine
from sqlmodel import Session

from core.admin.clients import ClientAuthenticator
from core.admin.tokens import TokenSigner
from core.cache import TtlValue
from core.clock import Clock, utcnow
from core.crypto import CodeKeys, SecretBox, load_master_key, token_key
from core.db.engine import READ_ONLY, make_engine, schema_lock, upgrade
from core.db.groupcommit import writer_for
from core.delivery.active_templates import ActiveTemplates, load_active_templates
from core.delivery.gateway_settings import GatewayRow, build_gateway, load_gateway_rows, parse_assignments
from core.delivery.gateways import Gateway
from core.delivery.gateways.http import close_shared_client
from core.delivery.gateways.outbox import OutboxGateway
from core.enums import Action, Channel
from core.issuing.action_config import OtpConfig, load_action_configs, seed_action_configs
from core.settings import Settings, get_settings


@dataclass(frozen=True)
class GatewayChoice:
    """Which gateway sends one channel, and why (e.g. "action override", "channel default", "OTP_GATEWAY_SMS")."""
    channel: Channel
    name: str  # the gateway's name, or "none" (the channel then fails with 7001)
    why: str
    gateway: Gateway | None = field(default=None, repr=False, compare=False)


def prepare_database(engine: Engine) -> None:
    """Migrate to the newest schema and seed the default configuration: safe at every start, however many
    workers or hosts start together (core.db.engine.schema_lock: the seed's read-then-insert is under it too)."""
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
        self.db = engine or make_engine(self.settings.database_url,
                                        write_lock_timeout=self.settings.write_lock_timeout_seconds)
        if prepare:
            prepare_database(self.db)
        self.read_db = self.db.execution_options(**{READ_ONLY: True})
        self.writer = writer_for(self.db)  # every engine write goes through it (group commit on SQLite)
        master = load_master_key(self.settings)
        self.keys = CodeKeys.from_master(master)
        self.box = SecretBox.from_master(master)
        self.tokens = TokenSigner(token_key(master))
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
        """The enabled gateways by name (receipts are accepted only for these)."""
        return {name: row for name, row in self._gateway_rows.get().items() if row.enabled}

    def all_gateway_rows(self) -> dict[str, GatewayRow]:
        """Every configured gateway by name, disabled ones included."""
        return self._gateway_rows.get()

    def choose_gateway(self, action: Action | None, channel: Channel, *, test_number: bool = False) -> GatewayChoice:
        """The one answer to "which gateway sends channel for action, and why": the engine sends with it and
        every console screen shows it.

        Test numbers → the outbox; else the action's override when it names an enabled gateway of that
        channel; else the channel's enabled default gateway; else OTP_GATEWAY_<CHANNEL>. action None asks
        for an action without an override.
        """
        if test_number:
            return GatewayChoice(channel, self.outbox.name, "test number (OTP_TEST_NUMBERS): the outbox only",
                                 self.outbox)
        rows = self.all_gateway_rows()
        ignored = ""
        name = parse_assignments(self.config_for(action).gateways).get(channel) if action is not None else None
        if name:
            row = rows.get(name)
            if row is not None and row.enabled and row.channel is channel:
                return self._built_choice(row, f"action override ({action.value}: {channel.value}={name})")
            problem = ("does not exist" if row is None else "is disabled" if not row.enabled
                       else f"sends {row.channel.value}")
            ignored = f"; the action's override {name} {problem}"
        default = next((r for r in rows.values() if r.enabled and r.channel is channel and r.is_default), None)
        if default is not None:
            return self._built_choice(default, f"channel default{ignored}")
        setting = str(getattr(self.settings, f"gateway_{channel.value.lower()}"))
        fallback = self.gateways.get(channel)
        return GatewayChoice(channel, fallback.name if fallback is not None else "none",
                             f"OTP_GATEWAY_{channel.value}={setting} (no enabled default gateway){ignored}", fallback)

    def _built_choice(self, row: GatewayRow, why: str) -> GatewayChoice:
        key = (row.id, row.updated_at)
        if key not in self._built:
            self._built[key] = build_gateway(row, self.box, production=not self.settings.is_development)
        gateway = self._built[key]
        if gateway is None:
            return GatewayChoice(row.channel, "none", f"{why}: {row.name} is an outbox, refused in production")
        return GatewayChoice(row.channel, row.name, why, gateway)

    def gateway_for(self, action: Action, channel: Channel) -> Gateway | None:
        """The gateway choose_gateway picks (without its reason)."""
        return self.choose_gateway(action, channel).gateway

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


def run(coro):  # type: ignore[no-untyped-def]
    """Run a service coroutine (core.services) from synchronous code (the console, scripts, tests)."""
    async def main():  # type: ignore[no-untyped-def]
        try:
            return await coro
        finally:
            await close_shared_client()  # the loop ends here, and its pooled connections with it
    return asyncio.run(main())
