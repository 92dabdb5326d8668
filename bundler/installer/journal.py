"""The install journal: ``state.json`` in the work folder, one installer at a time.

It records which bundle (name, version, lock digest) is installed and, per
phase, node and item (``plan.Action.key``), what completed, so that every re-run
plans only what is left. Writes are atomic
(temp file, fsync, rename); an exclusive ``flock`` on ``state.lock`` keeps a
second installer out. Whether a version may replace the installed one is the trust
decision's (``bundler.trust.check_downgrade``), made on what this journal records.
"""

import fcntl
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Dict

from bundler import files
from bundler.errors import InstallError

FORMAT = 1
MAX_JOURNAL_BYTES = 64 * 1024 * 1024  # a journal of many nodes and images is far smaller


class Journal:
    """``with Journal(folder) as j:`` holds the lock for the whole install."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.path = folder / "state.json"
        self._lock_fd = -1
        self.state: Dict[str, Any] = {"format": FORMAT, "installed": {}, "done": {}}

    def __enter__(self) -> "Journal":
        self.folder.mkdir(parents=True, exist_ok=True)
        try:  # never through a link: as root, O_CREAT would make a file wherever it points
            self._lock_fd = os.open(self.folder / "state.lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        except OSError as exc:
            raise InstallError(
                f"{self.folder / 'state.lock'}: cannot open the install lock ({exc.strerror}); "
                "it must be a plain file this installer made: move it away"
            ) from None
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock_fd)
            raise InstallError(
                f"another airbundle install is running (it holds {self.folder / 'state.lock'}); "
                "wait for it to finish"
            ) from None
        self.state = self.read(self.folder)
        return self

    def __exit__(self, *exc: object) -> None:
        os.close(self._lock_fd)

    @staticmethod
    def read(folder: Path) -> Dict[str, Any]:
        """The journal's content (empty when there is none); raises ``InstallError`` when unreadable."""
        path = folder / "state.json"
        if not os.path.lexists(path):
            return {"format": FORMAT, "installed": {}, "done": {}}
        try:
            data = files.read_capped(path, "install journal", MAX_JOURNAL_BYTES, InstallError, follow=False)
            state = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            raise InstallError(
                f"{path}: the install journal is unreadable ({exc}); move it away to start over"
            ) from exc
        if not isinstance(state, dict) or state.get("format") != FORMAT:
            raise InstallError(f"{path}: unknown journal format; move it away to start over")
        installed, done = state.get("installed"), state.get("done")
        if not (
            isinstance(installed, dict)
            and all(isinstance(e, dict) for e in installed.values())
            and isinstance(done, dict)
        ):
            raise InstallError(
                f"{path}: the install journal is damaged (its shape); move it away to start over"
            )
        return state

    def save(self) -> None:
        fd, tmp = tempfile.mkstemp(dir=str(self.folder), prefix=".state.", suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            json.dump(self.state, f, indent=1, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)

    def begin(self, name: str, version: str, lock_sha256: str) -> None:
        """Start (or continue) installing this bundle; work done for another bundle is forgotten.

        Its entry says ``partial`` until ``complete`` (or ``failed``/``interrupted``), and keeps the
        last version that did complete (``last_complete``), so that reports never call a bundle
        whose install stopped halfway "installed"."""
        current = self.state["installed"].get(name, {})
        if current.get("lock_sha256") != lock_sha256:
            self.state["done"] = {}
        complete = bool(current.get("complete")) and current.get("lock_sha256") == lock_sha256
        last = current.get("version") if current.get("complete") else current.get("last_complete")
        entry = {"version": version, "lock_sha256": lock_sha256, "complete": complete,
                 "status": "complete" if complete else "partial"}  # fmt: skip
        if last:
            entry["last_complete"] = last
        self.state["installed"][name] = entry
        self.save()

    def stopped(self, name: str, status: str, reason: str) -> None:
        """The install of ``name`` stopped: ``failed`` (with the error) or ``interrupted``. A complete
        entry stays complete (a re-run of one phase that failed does not undo the install)."""
        entry = self.state["installed"].get(name)
        if not isinstance(entry, dict) or entry.get("complete"):
            return
        entry.update(status=status, reason=reason)
        self.save()

    @staticmethod
    def status(state: Dict[str, Any], name: str) -> str:
        """What the journal says of ``name``, for reports: ``nothing``, ``1.0.2 (complete)``, or
        ``1.0.2 partly (failed: ...); 1.0.1 was the last complete``."""
        entry = state["installed"].get(name)
        if not isinstance(entry, dict) or not entry.get("version"):
            return "nothing"
        version = entry["version"]
        if entry.get("complete"):
            return f"{version} (complete)"
        how = entry.get("status") or "partial"
        reason = f": {entry['reason']}" if entry.get("reason") else ""
        before = entry.get("last_complete")
        return f"{version} partly, not complete ({how}{reason}); " + (
            f"{before} was the last complete install" if before else "no complete install before it"
        )

    def is_complete(self, name: str, lock_sha256: str) -> bool:
        """Whether exactly this bundle finished installing before."""
        return self.completed(self.state, name, lock_sha256)

    @staticmethod
    def completed(state: Dict[str, Any], name: str, lock_sha256: str) -> bool:
        """Whether ``state`` (``read``) records exactly this bundle as finished."""
        entry = state["installed"].get(name, {})
        return bool(entry.get("complete")) and entry.get("lock_sha256") == lock_sha256

    def complete(self, name: str) -> None:
        """Every phase of ``name`` finished: the install is complete."""
        entry = self.state["installed"][name]
        entry.update(complete=True, status="complete", last_complete=entry["version"])
        entry.pop("reason", None)
        self.save()

    def is_done(self, phase: str, node: str, item: str) -> bool:
        return bool(self.state["done"].get(f"{phase}/{node}/{item}"))

    def mark_done(self, phase: str, node: str, item: str) -> None:
        key = f"{phase}/{node}/{item}"
        if not self.state["done"].get(key):  # a step records itself as it finishes, apply again after
            self.state["done"][key] = True
            self.save()
