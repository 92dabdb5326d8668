"""The bundle's ``rpms/`` repository metadata, written by stock ``createrepo_c`` deterministically.

dnf and yum read a folder of rpms as a repository through its ``repodata/``. createrepo_c
writes it; with a fixed revision and timestamps (``--revision SOURCE_DATE_EPOCH
--set-timestamp-to-revision``), copies of the rpms whose mtime is that epoch (primary.xml
records each file's mtime), one worker (a stable order), gzip and no sqlite databases, the
same rpms give the same bytes (``tests/test_rpms.py`` builds twice). The metadata is not
signed: the bundle's signed lock covers every byte of it.

Not here: which rpms (``bundler.rpmsolve``), fetching them (``bundler.rpmsource``).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from bundler.errors import FetchError


def repodata(files: dict[str, Path], epoch: int) -> dict[str, bytes]:
    """``repodata/NAME`` -> bytes for a repository of ``files`` (file name -> cached rpm)."""
    with tempfile.TemporaryDirectory(prefix="airbundle-rpmrepo-") as tmp:
        root = Path(tmp)
        for name, path in sorted(files.items()):
            shutil.copyfile(path, root / name)
            os.utime(root / name, (epoch, epoch))
        try:
            run = subprocess.run(
                [
                    "createrepo_c",
                    "--no-database",
                    "--revision",
                    str(epoch),
                    "--set-timestamp-to-revision",
                    "--general-compress-type",
                    "gz",
                    "--workers",
                    "1",
                    "--quiet",
                    str(root),
                ],
                capture_output=True,
                timeout=3600,
            )
        except FileNotFoundError:
            raise FetchError(
                "createrepo_c is not installed (Debian package createrepo-c); it writes the bundle's rpms/ "
                "repository"
            ) from None
        if run.returncode != 0:
            raise FetchError(f"createrepo_c failed: {run.stderr.decode(errors='replace').strip()}")
        out = root / "repodata"
        return {f"repodata/{p.name}": p.read_bytes() for p in sorted(out.iterdir())}
