"""Reading generate and validate bodies: every problem is collected, so a client sees them all at once."""
from __future__ import annotations

from dataclasses import dataclass

from core import errors as E
from core.delivery.templates import check_template
from core.enums import Action, Channel, EntityType
from core.errors import OtpError, Problem
from core.issuing.entities import DEFAULT_ORG, InvalidEntity, NormalisedEntity, normalise_email, normalise_phone
from core.linebreaks import line_break_in
from core.settings import Settings

MAX_CHANNELS = 10
MAX_NAME_CHARS = 200
MAX_CODE_CHARS = 50


@dataclass(frozen=True)
class ChannelTarget:
    channel: Channel
    destination: str  # E.164 or lower-cased email


@dataclass(frozen=True)
class GenerateRequest:
    entity: NormalisedEntity
    action: Action
    channels: tuple[ChannelTarget, ...] | None  # None: the action's channel policy decides
    sms_template: str | None = None
    email_subject: str | None = None
    email_body: str | None = None
    whatsapp_template_name: str | None = None
    whatsapp_language: str | None = None
    zalo_template_id: str | None = None


# The GenerateRequest fields a client may send its own template in (the first level of the three).
TEMPLATE_FIELDS = ("sms_template", "email_subject", "email_body", "whatsapp_template_name", "whatsapp_language",
                   "zalo_template_id")


def template_fields(request: GenerateRequest) -> dict[str, str]:
    """The request body's own templates, by field: what a later failover step must send with."""
    return {name: getattr(request, name) for name in TEMPLATE_FIELDS if getattr(request, name) is not None}


@dataclass(frozen=True)
class ValidateRequest:
    entity: NormalisedEntity
    action: Action
    code: str = ""  # ASCII letters/digits only, checked here


def _require_object(payload: object) -> dict:
    if isinstance(payload, list):
        raise OtpError.single(E.INVALID_BODY, "batch requests are not supported: send one JSON object, not an array")
    if not isinstance(payload, dict):
        raise OtpError.single(E.INVALID_BODY, "the request body must be a JSON object")
    return payload


def _parse_entity(body: dict, settings: Settings, problems: list[Problem], org_id: int) -> NormalisedEntity | None:
    entity_type = EntityType.parse(body.get("entityType"))
    if entity_type is None:
        problems.append(Problem(E.INVALID_ENTITY_TYPE, "entityType must be MOBILE or EMAIL"))
    raw = body.get("entityValue")
    if not isinstance(raw, str) or not raw.strip():
        problems.append(Problem(E.INVALID_ENTITY_VALUE, "entityValue must be a non-empty string"))
        return None
    if entity_type is None:
        return None
    try:
        if entity_type is EntityType.MOBILE:
            value = normalise_phone(raw, region=settings.default_region, strict=settings.phone_validation == "strict")
        else:
            value = normalise_email(raw)
    except InvalidEntity as exc:
        code = E.INVALID_MOBILE if entity_type is EntityType.MOBILE else E.INVALID_ENTITY_VALUE
        problems.append(Problem(code, f"entityValue: {exc}"))
        return None
    return NormalisedEntity(entity_type, value, org_id)


def _parse_action(body: dict, problems: list[Problem]) -> Action | None:
    action = Action.parse(body.get("action"))
    if action is None:
        problems.append(Problem(E.INVALID_ACTION, f"action must be one of {', '.join(a.value for a in Action)}"))
    return action  # type: ignore[return-value]


def _optional_string(body: dict, name: str, code: int, problems: list[Problem]) -> str | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        problems.append(Problem(code, f"{name} must be a string"))
        return None
    if "\x00" in value:
        problems.append(Problem(code, f"{name} must not contain NUL characters"))
        return None
    if not _encodable(value):
        problems.append(Problem(code, f"{name} must be valid Unicode text"))
        return None
    return value


def _encodable(value: str) -> bool:
    """False for lone surrogates: valid in a JSON escape, impossible to store or send."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _parse_channels(body: dict, settings: Settings, problems: list[Problem]) -> tuple[ChannelTarget, ...] | None:
    raw = body.get("channels")
    if raw is None:
        return None
    if not isinstance(raw, list) or not raw:
        problems.append(Problem(E.INVALID_CHANNEL, "channels must be a non-empty array of {type, value} objects"))
        return None
    if len(raw) > MAX_CHANNELS:
        problems.append(Problem(E.INVALID_CHANNEL, f"at most {MAX_CHANNELS} channels may be named"))
        return None
    targets: list[ChannelTarget] = []
    for index, item in enumerate(raw):
        where = f"channels[{index}]"
        if not isinstance(item, dict):
            problems.append(Problem(E.INVALID_CHANNEL, f"{where} must be an object with type and value"))
            continue
        channel = Channel.parse(item.get("type"))
        if channel is None:
            problems.append(Problem(E.INVALID_CHANNEL,
                                    f"{where}.type must be one of EMAIL, SMS, MOBILE, PHONE, WHATSAPP, ZALO"))
        value = item.get("value")
        if not isinstance(value, str) or not value.strip():
            problems.append(Problem(E.INVALID_CHANNEL, f"{where}.value must be a non-empty string"))
            continue
        if channel is None:
            continue
        try:
            if channel.needs_phone:
                destination = normalise_phone(value, region=settings.default_region,
                                              strict=settings.phone_validation == "strict")
            else:
                destination = normalise_email(value)
        except InvalidEntity as exc:
            code = E.INVALID_MOBILE if channel.needs_phone else E.INVALID_CHANNEL
            problems.append(Problem(code, f"{where}.value: {exc}"))
            continue
        target = ChannelTarget(channel, destination)
        if target not in targets:  # the same channel to the same place is sent once
            targets.append(target)
    return tuple(targets)


def _check_body_template(source: str | None, *, name: str, kind: str, problems: list[Problem],
                         require_placeholder: bool = True) -> None:
    if source is None:
        return
    check = check_template(source, kind=kind, require_placeholder=require_placeholder)
    for issue in check.errors:
        problems.append(Problem(E.TEMPLATE_PROBLEM, f"{name}: {issue}"))


def parse_generate(payload: object, settings: Settings, *, org_id: int = DEFAULT_ORG) -> GenerateRequest:
    """A checked generate request of a customer of org_id, or OtpError (400) listing every problem found.

    settings are the organisation's (core.issuing.org_settings.OrgSettings.settings): national numbers are read in
    its phone region.
    """
    body = _require_object(payload)
    problems: list[Problem] = []
    entity = _parse_entity(body, settings, problems, org_id)
    action = _parse_action(body, problems)
    channels = _parse_channels(body, settings, problems)

    sms_template = _optional_string(body, "template", E.TEMPLATE_PROBLEM, problems)
    _check_body_template(sms_template, name="template", kind="text", problems=problems)
    email_subject = email_body = None
    email = body.get("emailTemplate")
    if email is not None:
        if not isinstance(email, dict):
            problems.append(Problem(E.TEMPLATE_PROBLEM, "emailTemplate must be an object with subject and body"))
        else:
            email_subject = _optional_string(email, "subject", E.TEMPLATE_PROBLEM, problems)
            email_body = _optional_string(email, "body", E.TEMPLATE_PROBLEM, problems)
            if email.get("body") is None:
                problems.append(Problem(E.TEMPLATE_PROBLEM, "emailTemplate.body is required"))
            _check_body_template(email_subject, name="emailTemplate.subject", kind="subject", problems=problems,
                                 require_placeholder=False)
            _check_body_template(email_body, name="emailTemplate.body", kind="body", problems=problems)

    whatsapp_name = _optional_string(body, "whatsappTemplateName", E.WHATSAPP_TEMPLATE_MISSING, problems)
    whatsapp_language = _optional_string(body, "whatsappTemplateLanguage", E.WHATSAPP_TEMPLATE_MISSING, problems)
    zalo_id = _optional_string(body, "zaloTemplateIdentifier", E.ZALO_TEMPLATE_MISSING, problems)
    for name, value, code in (("whatsappTemplateName", whatsapp_name, E.WHATSAPP_TEMPLATE_MISSING),
                              ("whatsappTemplateLanguage", whatsapp_language, E.WHATSAPP_TEMPLATE_MISSING),
                              ("zaloTemplateIdentifier", zalo_id, E.ZALO_TEMPLATE_MISSING)):
        if value is not None and len(value) > MAX_NAME_CHARS:
            problems.append(Problem(code, f"{name} is longer than {MAX_NAME_CHARS} characters"))
        elif value is not None and (found := line_break_in(value)):  # a name is one line (the subject: templates)
            problems.append(Problem(code, f"{name} must be one line; it contains {found}"))

    if problems:
        raise OtpError(problems, 400)
    assert entity is not None and action is not None
    return GenerateRequest(entity, action, channels, sms_template, email_subject, email_body,
                           (whatsapp_name or "").strip() or None, whatsapp_language, (zalo_id or "").strip() or None)


def parse_validate(payload: object, settings: Settings, *, org_id: int = DEFAULT_ORG) -> ValidateRequest:
    """A checked validate request, or OtpError (400) listing every problem found.

    The code must be a string of ASCII letters and digits: numbers lose leading zeros, and arrays,
    objects or look-alike digits are refused here rather than counted as guesses.
    """
    body = _require_object(payload)
    problems: list[Problem] = []
    entity = _parse_entity(body, settings, problems, org_id)
    action = _parse_action(body, problems)
    key = "code" if "code" in body else "otp"
    code = body.get(key)
    if code is None or code == "":
        problems.append(Problem(E.NO_OTP, "no OTP passed: send it as 'code'"))
    elif not isinstance(code, str):
        problems.append(Problem(E.OTP_INVALID, "code must be a string of digits or letters"))
    elif len(code) > MAX_CODE_CHARS or not code.isascii() or not code.isalnum():
        problems.append(Problem(E.OTP_INVALID, "code may hold only ASCII digits and letters"))
    if problems:
        raise OtpError(problems, 400)
    assert entity is not None and action is not None and isinstance(code, str)
    return ValidateRequest(entity, action, code)
