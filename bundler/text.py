"""Text from outside made safe to print on a terminal.

What a node answers over SSH (``uname``, ``/etc/os-release``, a tool's error output), what an
unsigned lock says before its signature is checked, a file name from a tar header: any of it can
hold terminal control sequences that retitle the window, hide the lines after them or move the
cursor up over what was printed ("(checked)" over "(not checked)"). ``printable`` writes every
control character except newline and tab as a visible ``\\xNN`` escape (C1 controls and DEL too,
and the bidirectional controls as ``\\uNNNN``), so what reaches the operator's terminal is exactly
what was said, never an instruction to it.

It does not print anything itself (the CLIs do). Carried in bundles: python3 3.6, stdlib only.
"""

import re

# C0 but newline and tab, DEL, C1; and the bidirectional controls (U+061C, U+200E-F, U+202A-E,
# U+2066-9), which reorder how a terminal shows the characters around them
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def printable(text: str) -> str:
    """``text`` with its control characters (all but newline and tab) shown as ``\\xNN`` (``\\uNNNN``)."""
    return _CONTROL.sub(_escape, text)


def _escape(match: "re.Match[str]") -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 256 else f"\\u{code:04x}"
