"""The templates in force: the active approved version of each action and channel, the only one ever sent.

Drafting and approving versions is core.admin.template_versions; this is what the engine and its caches read.
"""
from __future__ import annotations

from sqlalchemy import Connection, select

from core.db.models import TemplateVersion
from core.enums import Action, Channel

ActiveTemplates = dict[tuple[Action, Channel], dict]


def load_active_templates(conn: Connection) -> dict[int, ActiveTemplates]:
    """Per organisation, the active approved version per action and channel; nothing else is ever used for sending."""
    rows = conn.execute(select(TemplateVersion.__table__).where(
        TemplateVersion.status == "approved", TemplateVersion.is_active.is_(True))).mappings()
    active: dict[int, ActiveTemplates] = {}
    for row in rows:
        action, channel = Action.parse(row["action"]), Channel.parse(row["channel"])
        if action is not None and channel is not None:
            active.setdefault(row["org_id"], {})[(action, channel)] = dict(row)  # type: ignore[index]
    return active
