"""Line breaks in text that must stay on one line: an email subject (a mail header), a template name."""
from __future__ import annotations

import re

# Every character str.splitlines() breaks on, and NUL. A mail header ends at CR or LF: a subject carrying one
# could add headers of its own (Bcc:, a second Content-Type); the others break lines in mail clients, logs
# and provider consoles, and no subject or template name needs them.
LINE_BREAKS = {
    "\x00": "NUL", "\n": "line feed", "\r": "carriage return", "\v": "vertical tab", "\f": "form feed",
    "\x1c": "file separator", "\x1d": "group separator", "\x1e": "record separator", "\x85": "next line",
    "\u2028": "line separator", "\u2029": "paragraph separator",
}
_FIRST_BREAK = re.compile("[" + "".join(LINE_BREAKS) + "]")


def line_break_in(text: str) -> str | None:
    """A description of the first line break in text (for instance 'U+000A line feed'), or None."""
    found = _FIRST_BREAK.search(text)
    if found is None:
        return None
    char = found.group()
    return f"U+{ord(char):04X} {LINE_BREAKS[char]}"
