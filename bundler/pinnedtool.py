"""Runs a manifest's pinned binary on the build host, the one way the build asks a tool anything.

The cached binary is copied into a private temporary folder with its SHA-256 checked again as it
is copied (the bytes that run are the bytes the manifest pins, not whatever the cache holds now),
then run with stdin closed, the environment it is given and a time limit; its refusal or silence
becomes an ``InputError`` naming the manifest line, the command and the tool's own last words.

It does not decide what to ask (``kinds.Kind.images_argv``, ``k0simages.LIST_IMAGES``) nor read
the answer (``build._ask_tool``, ``k0sbuild.list_images``).
"""

from __future__ import annotations

import hashlib
import subprocess
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

from bundler.errors import FetchError, InputError
from bundler.manifest import BinarySpec

TIMEOUT = 300  # seconds: listing images is quick; a tool waiting on the network is not


class PinnedTool:
    """One pinned binary, copied out and ready to run (``pinned``)."""

    def __init__(self, exe: Path, name: str, where: str, env: Mapping[str, str]) -> None:
        self.exe, self.name, self.where, self.env = exe, name, where, dict(env)

    def run(self, args: Sequence[str], advice: str) -> str:
        """The tool's stdout for ``args``.

        Raises:
            OSError: the binary cannot run here (not for this host, a noexec folder).
            InputError: it did not answer within ``TIMEOUT``, or exited non-zero; the message
                quotes its output and ends with ``advice`` (exit 2).
        """
        command = " ".join([self.name, *args])
        try:
            run = subprocess.run(
                [str(self.exe), *args],
                capture_output=True,
                timeout=TIMEOUT,
                env=self.env,
                stdin=subprocess.DEVNULL,
            )
        except subprocess.TimeoutExpired as exc:
            raise InputError(f"{self.where}: `{command}` did not answer within {TIMEOUT} s") from exc
        if run.returncode != 0:
            text = (run.stdout + run.stderr).decode(errors="replace").strip()
            raise InputError(
                f"{self.where}: the pinned {self.name} refused `{command}` (exit {run.returncode}): "
                f"{text[-800:] or 'no output'}; {advice}"
            )
        return run.stdout.decode(errors="replace")


@contextmanager
def pinned(binary: Path, spec: BinarySpec, where: str, env: Mapping[str, str]) -> Iterator[PinnedTool]:
    """``spec``'s cached ``binary``, checked and copied into a private folder for as long as the
    block runs.

    Raises:
        FetchError: the cached binary no longer matches its sha256 (exit 5).
    """
    with tempfile.TemporaryDirectory(prefix="airbundle-tool-") as tmp:
        exe = Path(tmp) / spec.name
        data = binary.read_bytes()
        if hashlib.sha256(data).hexdigest() != spec.sha256:
            raise FetchError(f"{binary}: the cached {spec.name} no longer matches its sha256; build again")
        exe.write_bytes(data)
        exe.chmod(0o700)
        yield PinnedTool(exe, spec.name, where, env)
