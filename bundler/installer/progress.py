"""The installer's one progress printer: bars on a terminal, plain lines otherwise (stdlib, 3.6+).

The site has no pip, so no tqdm: this small printer is carried in the bundle instead. Only the
installer's CLI (``main``) makes one; the layers below report through the plain callbacks it
hands them (``counter``, ``update``), which may be called from the phases' threads at once.

On a terminal (stderr a tty, not ``--quiet``, ``TERM`` not ``dumb``) one status line on stderr
shows every running bar (``verify+unpack``, ``images worker-1``, ...) with bytes done of total,
redrawn at most ten times a second; the report's lines (``line``) are printed above it, so
bars and report never garble each other. Anywhere else bars draw nothing: a log or a CI job
gets the report's own lines only (one per node per phase). No colour is used, so ``NO_COLOR``
has nothing to turn off.
"""

import os
import shutil
import threading
import time
from typing import Callable, Dict, TextIO, Tuple

from bundler.text import printable

REDRAW_SECONDS = 0.1  # a bar redrawn at most ten times a second: cheap even at 1 GB/s


def human(n: float) -> str:
    """Bytes as people read them: 512 B, 1.5 MB, 2.0 GB (powers of 1000, like the build's)."""
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"  # pragma: no cover - the loop returns at GB


class Progress:
    """Bars (``update``, ``counter``, ``finish``) and the report's lines (``line``), thread-safe."""

    def __init__(self, out: TextIO, err: TextIO, terminal: bool, quiet: bool = False) -> None:
        self.out, self.err = out, err
        self.terminal = terminal and not quiet
        self.quiet = quiet
        self._bars: Dict[str, Tuple[int, int, str]] = {}  # key -> (done, total, note), in start order
        self._lock = threading.Lock()
        self._drawn = False
        self._last = 0.0

    @classmethod
    def for_streams(cls, out: TextIO, err: TextIO, quiet: bool = False) -> "Progress":
        """Bars only when stderr is a terminal that can redraw a line."""
        tty = err.isatty() and os.environ.get("TERM", "") != "dumb"
        return cls(out, err, tty, quiet)

    def update(self, key: str, done: int, total: int, note: str = "") -> None:
        """Bar ``key`` is at ``done`` of ``total`` bytes (drawn on a terminal only); ``note`` is
        shown after it (e.g. "3/5 blobs")."""
        if not self.terminal:
            return
        with self._lock:
            new = key not in self._bars  # a bar that starts is drawn at once, however soon
            self._bars[key] = (done, total, note)
            now = time.monotonic()
            if new or now - self._last >= REDRAW_SECONDS:
                self._last = now
                self._draw()

    def counter(self, key: str, total: int) -> Callable[[int], None]:
        """A callback that adds the bytes it is given to bar ``key`` (for ``archive``'s progress)."""
        done = [0]
        count_lock = threading.Lock()

        def add(n: int) -> None:
            with count_lock:
                done[0] += n
                at = done[0]
            self.update(key, at, total)

        self.update(key, 0, total)
        return add

    def finish(self, key: str) -> None:
        """Bar ``key`` is done: it leaves the status line."""
        if not self.terminal:
            return
        with self._lock:
            self._bars.pop(key, None)
            self._clear()
            self._draw()

    def line(self, text: str, err: bool = False, always: bool = False) -> None:
        """A line of the report (stdout, or stderr when ``err``), above the bars; ``--quiet`` keeps
        only the ``always`` ones (errors and what the operator must know)."""
        if self.quiet and not always:
            return
        with self._lock:
            self._clear()
            stream = self.err if err else self.out
            stream.write(printable(text) + "\n")
            stream.flush()
            self._draw()

    def close(self) -> None:
        """Remove every bar (at the end, or when interrupted)."""
        with self._lock:
            self._bars.clear()
            self._clear()

    def _clear(self) -> None:
        if self._drawn:
            self.err.write("\r\x1b[K")
            self.err.flush()
            self._drawn = False

    def _draw(self) -> None:
        if not self.terminal or not self._bars:
            return
        width = shutil.get_terminal_size((80, 24)).columns - 1
        parts = []
        for key, (done, total, note) in self._bars.items():
            share = min(1.0, done / total) if total else 0.0
            filled = int(share * 10)
            bar = "#" * filled + "." * (10 - filled)
            parts.append(
                f"{key} [{bar}] {share:4.0%} {human(done)}/{human(total)}" + (f" {note}" if note else "")
            )
        text = " | ".join(parts)
        self.err.write("\r\x1b[K" + printable(text)[:width])
        self.err.flush()
        self._drawn = True
