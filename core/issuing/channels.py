"""Which channels a generate sends on: as the request names them, else by the action's policy; and the failover plan."""
from __future__ import annotations

from core import errors as E
from core.enums import Channel, EntityType
from core.errors import OtpError, Problem
from core.issuing.action_config import OtpConfig
from core.issuing.entities import NormalisedEntity
from core.issuing.requests import ChannelTarget, GenerateRequest


def plan_channels(request: GenerateRequest, config: OtpConfig) -> list[ChannelTarget]:
    """The channels to send on: as requested (each enabled for the action), else by the action's policy."""
    if request.channels is not None:
        disabled = [t.channel.value for t in request.channels if t.channel not in config.channels]
        if disabled:
            raise OtpError([Problem(E.INVALID_CHANNEL, f"channel {name} is not enabled for action {config.action.value}")
                            for name in dict.fromkeys(disabled)], 422)
        return list(request.channels)
    is_email = request.entity.entity_type is EntityType.EMAIL
    for channel in config.channel_policy:
        if channel in config.channels and (channel is Channel.EMAIL) == is_email:
            return [ChannelTarget(channel, request.entity.value)]
    raise OtpError.single(E.INVALID_CHANNEL, f"no channel was named and the policy of {config.action.value} "
                          f"offers no enabled channel for an {request.entity.entity_type.value} entity", 422)


def failover_plan(entity: NormalisedEntity, config: OtpConfig) -> list[ChannelTarget]:
    """The action's failover channels that suit the entity and are enabled, in order; [] when there is none."""
    is_email = entity.entity_type is EntityType.EMAIL
    plan = [ChannelTarget(c, entity.value) for c in config.failover
            if c in config.channels and (c is Channel.EMAIL) == is_email]
    return plan if len(plan) > 1 else []
