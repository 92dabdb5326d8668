"""Signed expiry (--expires) and key windows from allowed_signers (valid-after/valid-before, namespaces)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bundler.build import parse_expiry
from bundler.errors import InputError

from .conftest import Keys, Project, run_cli

DAY = 86400


@pytest.mark.parametrize(
    "text, expected",
    [("180d", 1000 + 180 * DAY), ("2w", 1000 + 14 * DAY), ("36h", 1000 + 36 * 3600), ("1970-01-02", DAY)],
)
def test_parse_expiry(text: str, expected: int) -> None:
    assert parse_expiry(text, base=1000) == expected


def test_parse_expiry_refuses_nonsense() -> None:
    with pytest.raises(InputError, match="180d, 12w, 36h"):
        parse_expiry("soon", base=0)


def _build(project: Project, keys: Keys, out: Path, cache: Path, *extra: str, env: dict | None = None):
    return run_cli(
        "build", project.manifest, "-o", out, "--key", keys.key_path, "--cache", cache, *extra, env=env
    )


def test_expired_bundle_is_refused_unless_allowed(
    project: Project, keys: Keys, tmp_path: Path, cache_dir: Path
) -> None:
    # Built "in 1970" with a 30-day life: long expired now. The date comes from SOURCE_DATE_EPOCH,
    # so the build stays reproducible.
    result = _build(
        project, keys, tmp_path / "old", cache_dir, "--expires", "30d", env={"SOURCE_DATE_EPOCH": "1"}
    )
    assert result.exit_code == 0, result.stderr
    bundle = Path(result.stdout.strip())
    facts = json.loads(run_cli("inspect", bundle, "--json").stdout)
    assert facts["expires"] == 1 + 30 * DAY and facts["expired"] is True
    shown = run_cli("inspect", bundle).stdout
    assert "expires:  1970-01-31" in shown and "EXPIRED" in shown and "--allow-expired" in shown
    refused = run_cli("verify", bundle, "--pubkey", keys.pub_path)
    assert refused.exit_code == 3
    assert (
        "expired at 1970-01-31 00:00:01 UTC (host clock 20" in refused.stderr
        and "--allow-expired" in refused.stderr
    )
    assert run_cli("verify", bundle, "--pubkey", keys.pub_path, "--allow-expired").exit_code == 0
    fresh = _build(project, keys, tmp_path / "new", cache_dir, "--expires", "180d")
    assert run_cli("verify", Path(fresh.stdout.strip()), "--pubkey", keys.pub_path).exit_code == 0
    assert json.loads(run_cli("inspect", Path(fresh.stdout.strip()), "--json").stdout)["expired"] is False
    assert "(in 180 days)" in run_cli("inspect", Path(fresh.stdout.strip())).stdout


def _signers(tmp_path: Path, name: str, keys: Keys, options: str) -> Path:
    path = tmp_path / name
    path.write_text(f"airbundle {options} {keys.pub.openssh_line()}\n")
    return path


@pytest.mark.parametrize(
    "options, message",
    [
        ('valid-before="20200101"', "trusted only until 2020-01-01"),
        ('valid-after="29990101Z"', "trusted only from 2999-01-01 00:00:00 UTC"),
        ('namespaces="git,file"', "limit to git,file"),
    ],
)
def test_key_windows_from_allowed_signers(
    built: Path, keys: Keys, tmp_path: Path, options: str, message: str
) -> None:
    result = run_cli("verify", built, "--pubkey", _signers(tmp_path, "as", keys, options))
    assert result.exit_code == 3 and message in result.stderr


def test_key_rotation_with_two_trusted_keys(
    built: Path, keys: Keys, other_keys: Keys, tmp_path: Path
) -> None:
    """A site that trusts the old key until a date and the new key after it accepts the bundle now."""
    old = _signers(tmp_path, "old", keys, 'namespaces="airbundle",valid-before="29990101Z"')
    new = _signers(tmp_path, "new", other_keys, 'valid-after="20200101"')
    assert run_cli("verify", built, "--pubkey", new, "--pubkey", old).exit_code == 0
    assert run_cli("verify", built, "--pubkey", new).exit_code == 3
