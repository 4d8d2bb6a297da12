"""Template checks, the sandboxed renderer and the built-in templates.

A check result answers the console's questions (placeholders, unknown variables, syntax errors with lines,
SMS encoding and segments); the engine refuses what the check refuses, so preview and enforcement agree.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import lru_cache

from jinja2 import StrictUndefined, TemplateSyntaxError, nodes
from jinja2.exceptions import SecurityError, UndefinedError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from core.enums import Channel
from core.linebreaks import line_break_in

PLACEHOLDER = "validation_code"
ALLOWED_VARIABLES = frozenset({"validation_code", "expiry_minutes", "action", "brand"})
# Names people reach for instead of validation_code; each gets a hint with the fix.
COMMON_MISTAKES = frozenset({"otp_code", "otp", "code", "OTP", "otpCode", "validationCode"})
SAFE_FILTERS = frozenset({"upper", "lower", "title", "capitalize", "trim", "e", "escape"})
MAX_SOURCE_CHARS = {"text": 2_000, "subject": 500, "body": 100_000}
MAX_OUTPUT_CHARS = 200_000
MAX_NESTING = 12

BUILTIN_SMS = "Hi user.Your otp for validation is {{ validation_code }}."
BUILTIN_EMAIL_SUBJECT = "Validation Code"
BUILTIN_EMAIL_BODY = ("Dear Customer, The validation code for your request is: {{ validation_code }}. "
                      "You will also receive the validation code by SMS on your registered mobile number shortly.")
BUILTIN_VOICE = "Your validation code is {{ validation_code }}."

GSM7_BASIC = frozenset(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?¡"
    "ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà")
GSM7_EXTENDED = frozenset("^{}\\[~]|€\f")


@dataclass(frozen=True)
class TemplateIssue:
    message: str
    line: int | None = None

    def __str__(self) -> str:
        return f"line {self.line}: {self.message}" if self.line else self.message


@dataclass(frozen=True)
class SmsStats:
    encoding: str  # GSM-7 or UCS-2
    characters: int  # septets for GSM-7 (extended characters count two), UTF-16 units for UCS-2
    segments: int


@dataclass
class TemplateCheck:
    """What is wrong with one template source; errors block approval and use, warnings do not."""
    errors: list[TemplateIssue] = field(default_factory=list)
    warnings: list[TemplateIssue] = field(default_factory=list)
    placeholder_count: int = 0
    # Constructs outside the allow-list (loops, calls, attribute access...): refused even in a draft.
    unsafe: list[TemplateIssue] = field(default_factory=list)
    variables: frozenset[str] = frozenset()
    unknown_variables: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return not self.errors


_env_text = ImmutableSandboxedEnvironment(undefined=StrictUndefined, autoescape=False)
_env_html = ImmutableSandboxedEnvironment(undefined=StrictUndefined, autoescape=True)


def _describe(node: nodes.Node) -> str:
    names = {
        nodes.Getattr: "attribute access", nodes.Getitem: "item access", nodes.Call: "a function call",
        nodes.For: "a loop", nodes.If: "a condition", nodes.Macro: "a macro", nodes.Assign: "an assignment",
        nodes.Mul: "multiplication", nodes.Pow: "a power", nodes.Include: "an include",
        nodes.Import: "an import", nodes.Extends: "extends", nodes.Block: "a block",
    }
    for kind, label in names.items():
        if isinstance(node, kind):
            return label
    return type(node).__name__


_ALLOWED_NODES = (nodes.Template, nodes.Output, nodes.TemplateData, nodes.Name, nodes.Const, nodes.Filter)


def check_template(source: object, *, kind: str = "text", require_placeholder: bool = True) -> TemplateCheck:
    """Check a template source: syntax, exactly one placeholder, allow-listed variables, plain expressions only.

    Only variables, constants and a few string filters are allowed: loops, calls, attribute access and
    arithmetic are how sandbox escapes and output bombs start, and an OTP message needs none of them.
    kind is "text" (SMS/voice), "subject" or "body"; the subject needs no placeholder.
    """
    check = TemplateCheck()
    if not isinstance(source, str):
        check.errors.append(TemplateIssue("the template must be a string"))
        return check
    if not source.strip():
        check.errors.append(TemplateIssue("the template is empty"))
        return check
    limit = MAX_SOURCE_CHARS[kind]
    if len(source) > limit:
        check.errors.append(TemplateIssue(f"the template is {len(source)} characters long; at most {limit} are allowed"))
        return check
    if kind == "subject" and (found := line_break_in(source)):
        check.errors.append(TemplateIssue(f"the subject must be one line; it contains {found}"))
        return check
    try:
        tree = _env_text.parse(source)
    except TemplateSyntaxError as exc:
        check.errors.append(TemplateIssue(f"syntax error: {exc.message}", exc.lineno))
        return check
    except RecursionError:
        check.errors.append(TemplateIssue("the template is nested too deeply"))
        return check
    # Jinja compiles each nesting level (a filter included) into a deeper Python expression: past a few
    # dozen, compiling takes seconds or fails. A message needs far fewer; the walk does not recurse.
    depth, stack = 0, [(tree, 0)]
    while stack:
        node, level = stack.pop()
        depth = max(depth, level)
        stack.extend((child, level + 1) for child in node.iter_child_nodes())
    if depth > MAX_NESTING:
        check.errors.append(TemplateIssue(f"expressions may nest at most {MAX_NESTING} levels (filters included)"))
        return check

    names: list[str] = []
    refused: list[TemplateIssue] = []
    for node in tree.find_all(nodes.Node):
        if not isinstance(node, _ALLOWED_NODES):
            refused.append(TemplateIssue(
                f"{_describe(node)} is not allowed; use plain variables such as {{{{ {PLACEHOLDER} }}}}",
                getattr(node, "lineno", None)))
        elif isinstance(node, nodes.Filter) and node.name not in SAFE_FILTERS:
            refused.append(TemplateIssue(
                f"the filter '{node.name}' is not allowed (allowed: {', '.join(sorted(SAFE_FILTERS))})", node.lineno))
        elif isinstance(node, nodes.Name) and node.ctx == "load":
            names.append(node.name)
        elif kind == "subject" and isinstance(node, nodes.Const) and isinstance(node.value, str) \
                and (found := line_break_in(node.value)):  # {{ "\n" }} renders a real line feed
            refused.append(TemplateIssue(f"the subject must be one line; a constant contains {found}", node.lineno))
    # One message per construct and line is enough for a person to fix it.
    seen: set[str] = set()
    for issue in refused:
        if str(issue) not in seen:
            seen.add(str(issue))
            check.errors.append(issue)
            check.unsafe.append(issue)

    check.variables = frozenset(names)
    check.placeholder_count = names.count(PLACEHOLDER)
    unknown = sorted(set(names) - ALLOWED_VARIABLES)
    check.unknown_variables = tuple(unknown)
    for name in unknown:
        if name in COMMON_MISTAKES:
            check.errors.append(TemplateIssue(
                f"unknown variable '{name}': write {{{{ {PLACEHOLDER} }}}} for the code"))
        else:
            check.errors.append(TemplateIssue(
                f"unknown variable '{name}' (allowed: {', '.join(sorted(ALLOWED_VARIABLES))})"))
    if require_placeholder and check.placeholder_count != 1:
        if check.placeholder_count == 0:
            check.errors.append(TemplateIssue(f"the template must contain {{{{ {PLACEHOLDER} }}}} exactly once; it has none"))
        else:
            check.errors.append(TemplateIssue(
                f"the template must contain {{{{ {PLACEHOLDER} }}}} exactly once; it has {check.placeholder_count}, "
                "which would show the code several times"))
    elif not require_placeholder and check.placeholder_count > 1:
        check.errors.append(TemplateIssue(f"{{{{ {PLACEHOLDER} }}}} may appear at most once"))
    return check


@lru_cache(maxsize=512)
def _compiled(source: str, html: bool):  # type: ignore[no-untyped-def]
    return (_env_html if html else _env_text).from_string(source)


class RenderError(ValueError):
    pass


def render(source: str, variables: dict[str, object], *, html: bool = False, kind: str = "text",
           require_placeholder: bool = True) -> str:
    """Render a checked template in the immutable sandbox; refuses what check_template refuses."""
    check = _cached_check(source, kind, require_placeholder)
    if not check.ok:
        raise RenderError("; ".join(str(issue) for issue in check.errors))
    unexpected = set(variables) - ALLOWED_VARIABLES
    if unexpected:
        raise RenderError(f"variables outside the allow-list: {sorted(unexpected)}")
    try:
        output = _compiled(source, html).render(**variables)
    except (UndefinedError, SecurityError, TypeError, ValueError, SyntaxError, RecursionError) as exc:
        raise RenderError(f"the template failed to render: {exc}") from exc
    if len(output) > MAX_OUTPUT_CHARS:
        raise RenderError(f"the rendered message is longer than {MAX_OUTPUT_CHARS} characters")
    if kind == "subject" and (found := line_break_in(output)):  # a variable (the brand setting) brought it
        raise RenderError(f"the rendered subject must be one line; it contains {found}")
    return output


@lru_cache(maxsize=512)
def _cached_check(source: str, kind: str, require_placeholder: bool) -> TemplateCheck:
    return check_template(source, kind=kind, require_placeholder=require_placeholder)


def sms_stats(text: str) -> SmsStats:
    """Encoding, length and segment count as carriers bill them (GSM-7 160/153, UCS-2 70/67)."""
    if all(ch in GSM7_BASIC or ch in GSM7_EXTENDED for ch in text):
        septets = sum(2 if ch in GSM7_EXTENDED else 1 for ch in text)
        segments = 1 if septets <= 160 else math.ceil(septets / 153)
        return SmsStats("GSM-7", septets, segments)
    units = len(text.encode("utf-16-le")) // 2
    segments = 1 if units <= 70 else math.ceil(units / 67)
    return SmsStats("UCS-2", units, segments)


def template_variables(*, code: str, action: str, validity_minutes: int, brand: str) -> dict[str, object]:
    """The variables a template may use (ALLOWED_VARIABLES), for a real message or a preview alike."""
    return {"validation_code": code, "expiry_minutes": validity_minutes, "action": action, "brand": brand}


def sample_variables(*, action: str, code_length: int, validity_minutes: int, brand: str) -> dict[str, object]:
    """Variables for a preview: a sample code of the configured length, never a real one."""
    return template_variables(code=("1234567890" * 5)[:code_length], action=action,
                              validity_minutes=validity_minutes, brand=brand)


def builtin_for(channel: Channel) -> dict[str, object]:
    """The built-in template fields for a channel, the last level of the three-level order."""
    if channel is Channel.SMS:
        return {"text": BUILTIN_SMS}
    if channel is Channel.EMAIL:
        return {"subject": BUILTIN_EMAIL_SUBJECT, "body": BUILTIN_EMAIL_BODY, "is_html": False}
    return {"text": BUILTIN_VOICE}
