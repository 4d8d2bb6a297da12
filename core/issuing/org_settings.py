"""An organisation as the engine reads it: the service settings with the organisation's brand, time zone and
phone region applied (NULL in its row: the service setting, so the default organisation behaves as before)."""
from __future__ import annotations

from dataclasses import dataclass
from zoneinfo import ZoneInfo

from sqlalchemy import Connection, select

from core.db.models import Organisation
from core.issuing.entities import DEFAULT_ORG
from core.settings import Settings

__all__ = ["DEFAULT_ORG", "OrgSettings", "UnknownOrganisation", "load_org_settings", "org_scope"]


class UnknownOrganisation(LookupError):
    """No organisation with that id (or slug)."""


@dataclass(frozen=True)
class OrgSettings:
    """One organisation's effective settings.

    settings is the service's Settings with this organisation's brand, timezone and default_region in place of
    the service's, so everything that reads settings.tz, settings.default_region or settings.brand (the day
    boundary of the daily limits, parsing national numbers, the {{ brand }} variable) reads the organisation's;
    every other setting (limits, budgets, gateways by setting, test numbers) is the service's.
    """
    id: int
    slug: str
    name: str
    settings: Settings

    @property
    def brand(self) -> str:
        return self.settings.brand

    @property
    def timezone(self) -> str:
        return self.settings.timezone

    @property
    def tz(self) -> ZoneInfo:
        return self.settings.tz

    @property
    def region(self) -> str:
        return self.settings.default_region


def org_settings(row: Organisation | dict, service: Settings) -> OrgSettings:
    get = (lambda k: row[k]) if isinstance(row, dict) else (lambda k: getattr(row, k))
    own = {name: get(column) for name, column in (("brand", "brand"), ("timezone", "timezone"),
                                                   ("default_region", "phone_region")) if get(column) is not None}
    settings = service
    if own:
        settings = service.model_copy(update=own)
        settings._service_timezone = service.timezone  # the platform budgets' day stays the service's
    return OrgSettings(get("id"), get("slug"), get("name"), settings)


def load_org_settings(conn: Connection, service: Settings) -> dict[int, OrgSettings]:
    """Every organisation by id."""
    return {r["id"]: org_settings(dict(r), service) for r in conn.execute(select(Organisation.__table__)).mappings()}


def org_scope(org_id: int, scope: str) -> str:
    """A usage_counter scope that is per organisation though its key is not (a per-action budget is keyed by
    the channel; a per-action cap follows it): unchanged in the default organisation, "o<id>|scope" elsewhere."""
    return scope if org_id == DEFAULT_ORG else f"o{org_id}|{scope}"
