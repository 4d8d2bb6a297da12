"""Template checks and the sandboxed renderer: what staff and clients may write, and what they may not."""
from __future__ import annotations

import time

import pytest

from core.delivery.templates import RenderError, check_template, render, sms_stats
from tests.conftest import no_collector_pauses

VARS = {"validation_code": "123456", "expiry_minutes": 10, "action": "COUPON", "brand": "Acme"}


def messages(source, **kwargs):
    return [str(i) for i in check_template(source, **kwargs).errors]


def test_a_good_template_passes_and_renders():
    check = check_template("{{ brand|upper }}: {{ validation_code }} valid {{ expiry_minutes }} min for {{ action }}")
    assert check.ok and check.placeholder_count == 1 and check.unknown_variables == ()
    assert render("{{ brand|upper }}: {{ validation_code }}", VARS) == "ACME: 123456"


@pytest.mark.parametrize("source, fragment", [
    ("Your code", "has none"),
    ("{{ validation_code }} and {{ validation_code }}", "it has 2"),
    ("{{ otp_code }}", "write {{ validation_code }} for the code"),
    ("{{ validation_code }} {{ customer_name }}", "unknown variable 'customer_name'"),
    ("line one\n{{ validation_code }\n", "line 2: syntax error"),
    ("", "empty"),
])
def test_problems_are_reported_with_a_reason(source, fragment):
    assert any(fragment in m for m in messages(source)), messages(source)


@pytest.mark.parametrize("payload", [
    "{{ ''.__class__.__mro__ }} {{ validation_code }}",
    "{{ validation_code|attr('format') }}",
    "{{ range(10**9)|list }} {{ validation_code }}",
    "{% for a in range(1000) %}{% for b in range(1000) %}x{% endfor %}{% endfor %}{{ validation_code }}",
    "{{ 'x' * 10**9 }} {{ validation_code }}",
    "{{ validation_code.__init__.__globals__ }}",
    "{{ cycler.__init__.__globals__.os }} {{ validation_code }}",
    "{% set x = 1 %}{{ validation_code }}",
    "{{ lipsum() }} {{ validation_code }}",
    "{% include 'x' %}{{ validation_code }}",
])
def test_sandbox_escapes_and_bombs_are_refused_fast(payload):
    with no_collector_pauses():
        started = time.perf_counter()
        assert not check_template(payload).ok
        with pytest.raises(RenderError):
            render(payload, VARS)
        took = time.perf_counter() - started
    assert took < 1.0


def test_render_refuses_variables_outside_the_allow_list():
    with pytest.raises(RenderError):
        render("{{ validation_code }}", {**VARS, "secret": "x"})


def test_html_bodies_are_escaped():
    out = render("<p>{{ brand }} {{ validation_code }}</p>", {**VARS, "brand": "<b>&"}, html=True, kind="body")
    assert out == "<p>&lt;b&gt;&amp; 123456</p>"


def test_source_size_is_capped():
    assert any("at most 2000" in m for m in messages("x" * 2001 + "{{ validation_code }}"))


@pytest.mark.parametrize("text, encoding, characters, segments", [
    ("a" * 160, "GSM-7", 160, 1),
    ("a" * 161, "GSM-7", 161, 2),
    ("a" * 306, "GSM-7", 306, 2),
    ("a" * 307, "GSM-7", 307, 3),
    ("€" * 80, "GSM-7", 160, 1),  # extended characters count two
    ("€" * 81, "GSM-7", 162, 2),
    ("é" * 160, "GSM-7", 160, 1),
    ("ß", "GSM-7", 1, 1),
    ("ç" * 70, "UCS-2", 70, 1),  # ç is not GSM-7 (only Ç is)
    ("ç" * 71, "UCS-2", 71, 2),
    ("ç" * 134, "UCS-2", 134, 2),
    ("ç" * 135, "UCS-2", 135, 3),
    ("😀" * 35, "UCS-2", 70, 1),  # an emoji is two UTF-16 units
])
def test_sms_encoding_and_segments(text, encoding, characters, segments):
    stats = sms_stats(text)
    assert (stats.encoding, stats.characters, stats.segments) == (encoding, characters, segments)
