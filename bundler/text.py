"""Text from outside made safe to print on a terminal.

What a node answers over SSH (``uname``, ``/etc/os-release``, a tool's error output), what an
unsigned lock says before its signature is checked, a file name from a tar header: any of it can
hold terminal control sequences that retitle the window, hide the lines after them or move the
cursor up over what was printed ("(checked)" over "(not checked)"). ``printable`` writes every
control character except newline and tab as a visible ``\\xNN`` escape (C1 controls and DEL too),
so what reaches the operator's terminal is exactly what was said, never an instruction to it.

It does not print anything itself (the CLIs do). Carried in bundles: python3 3.6, stdlib only.
"""

import re

_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def printable(text: str) -> str:
    """``text`` with its control characters (all but newline and tab) shown as ``\\xNN``."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)
