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
from core.delivery.gateway_settings import GatewayRow, build_gateway, load_all_gateway_rows, parse_assignments
from core.delivery.gateways import Gateway
from core.delivery.gateways.http import close_shared_client
from core.delivery.gateways.outbox import OutboxGateway
from core.enums import Action, Channel
from core.issuing.action_config import OtpConfig, load_action_configs, seed_action_configs, seed_default_organisation
from core.issuing.org_settings import OrgSettings, UnknownOrganisation, load_org_settings
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
            seed_default_organisation(conn)
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
        # Every organisation's, by org_id: one read each per OTP_CACHE_SECONDS however many organisations ask.
        self._orgs: TtlValue[dict[int, OrgSettings]] = TtlValue(self._load_orgs, self.settings.cache_seconds)
        self._configs: TtlValue[dict[int, dict[Action, OtpConfig]]] = TtlValue(self._load_configs,
                                                                             self.settings.cache_seconds)
        self._templates: TtlValue[dict[int, ActiveTemplates]] = TtlValue(self._load_templates,
                                                                       self.settings.cache_seconds)
        self._gateway_rows: TtlValue[dict[int, dict[str, GatewayRow]]] = TtlValue(self._load_gateway_rows,
                                                                                 self.settings.cache_seconds)
        self._built: dict[tuple[int, object], Gateway | None] = {}
        self.auth = ClientAuthenticator(self.read_db, self.settings.auth_cache_seconds)

    def _load_orgs(self) -> dict[int, OrgSettings]:
        with self.read_db.connect() as conn:
            return load_org_settings(conn, self.settings)

    def _load_configs(self) -> dict[int, dict[Action, OtpConfig]]:
        with self.read_db.connect() as conn:
            return load_action_configs(conn)

    def _load_templates(self) -> dict[int, ActiveTemplates]:
        with self.read_db.connect() as conn:
            return load_active_templates(conn)

    def _load_gateway_rows(self) -> dict[int, dict[str, GatewayRow]]:
        with self.read_db.connect() as conn:
            return load_all_gateway_rows(conn)

    def org(self, org_id: int) -> OrgSettings:
        """The organisation's effective settings (brand, time zone, phone region with the service's defaults
        applied); UnknownOrganisation when there is none with that id."""
        found = self._orgs.get().get(org_id)
        if found is None:  # made since the last read (by another process): read again once
            self._orgs.invalidate()
            found = self._orgs.get().get(org_id)
            if found is None:
                raise UnknownOrganisation(f"no organisation with id {org_id}")
        return found

    def org_by_slug(self, slug: str) -> OrgSettings:
        """The organisation with this slug; UnknownOrganisation when there is none."""
        for found in (self._orgs.get(), None):
            if found is None:
                self._orgs.invalidate()
                found = self._orgs.get()
            for org in found.values():
                if org.slug == slug:
                    return org
        raise UnknownOrganisation(f"no organisation with the slug {slug!r}")

    def organisations(self) -> dict[int, OrgSettings]:
        """Every organisation by id."""
        return self._orgs.get()

    def gateway_rows(self, org_id: int) -> dict[str, GatewayRow]:
        """The organisation's enabled gateways by name (receipts are accepted only for these)."""
        return {name: row for name, row in self.all_gateway_rows(org_id).items() if row.enabled}

    def all_gateway_rows(self, org_id: int) -> dict[str, GatewayRow]:
        """Every gateway the organisation configured, by name, disabled ones included."""
        return self._gateway_rows.get().get(org_id, {})

    def choose_gateway(self, org_id: int, action: Action | None, channel: Channel, *,
                       test_number: bool = False) -> GatewayChoice:
        """The one answer to "which gateway sends channel for action in organisation org_id, and why": the engine
        sends with it and every console screen shows it.

        Test numbers → the outbox; else the action's override when it names an enabled gateway of that
        channel (of the organisation); else the organisation's enabled default gateway for the channel; else
        OTP_GATEWAY_<CHANNEL>. action None asks for an action without an override. Only the organisation's own
        gateways are ever looked at.
        """
        if test_number:
            return GatewayChoice(channel, self.outbox.name, "test number (OTP_TEST_NUMBERS): the outbox only",
                                 self.outbox)
        rows = self.all_gateway_rows(org_id)
        ignored = ""
        name = parse_assignments(self.config_for(org_id, action).gateways).get(channel) \
            if action is not None else None
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

    def gateway_for(self, org_id: int, action: Action, channel: Channel) -> Gateway | None:
        """The gateway choose_gateway picks (without its reason)."""
        return self.choose_gateway(org_id, action, channel).gateway

    def config_for(self, org_id: int, action: Action) -> OtpConfig:
        """The organisation's configuration of action."""
        config = self._configs.get().get(org_id, {}).get(action)
        if config is None:  # a new organisation, or a row deleted by hand: seed rather than fail every request
            self.org(org_id)  # UnknownOrganisation for an id that is none
            with self.writer.within() as conn:
                seed_action_configs(conn, org_id)
                config = load_action_configs(conn)[org_id][action]
            self._configs.invalidate()
        return config

    def active_configs(self, org_id: int) -> dict[Action, OtpConfig]:
        """The organisation's configuration of every action (those seeded so far)."""
        return self._configs.get().get(org_id, {})

    def active_templates(self, org_id: int) -> ActiveTemplates:
        """The organisation's active approved template per action and channel."""
        return self._templates.get().get(org_id, {})

    def configuration_changed(self) -> None:
        """Call after saving configuration, templates, gateways or organisations, so this process uses them at once."""
        self._orgs.invalidate()
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
