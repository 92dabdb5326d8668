"""Bundle versions: the grammar, the order, and the journal's downgrade rule built on them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bundler import trust, versions
from bundler.errors import InstallError, TrustError
from bundler.installer.journal import Journal

# Each row strictly ascending.
ORDERED = [
    ["1.0.0-rc1", "1.0.0-rc2", "1.0.0-rc10", "1.0.0"],
    ["1.0.0~rc1", "1.0.0"],
    ["1.0.0~rc1", "1.0.0-rc2"],  # '~' and '-' mean the same
    ["1.0.0-alpha", "1.0.0-alpha.1", "1.0.0-beta"],
    ["1.0.0-1", "1.0.0-2", "1.0.0-10", "1.0.0-alpha"],  # numeric identifiers first, numerically
    ["1.0.0-alpha.1", "1.0.0-alpha.1.1", "1.0.0-alpha.2", "1.0.0-alpha.beta"],
    ["23.9", "23.12", "23.12.1"],
    ["1.0", "1.0a", "1.0b", "1.1"],
    ["1.9.9", "1.10", "2"],
    ["1.0.0-rc1", "1.0.0-rc1+b1", "1.0.0", "1.0.0+b1", "1.0.0+b2", "1.0.0+b10", "1.0.1-alpha"],
    ["0.1", "0.1.0", "0.1.0.1", "24.0.7"],
    ["1.0.0-rc1", "1.0.0-RC2", "1.0.0-rc10", "1.0.0"],  # letters compare case-folded
]


@pytest.mark.parametrize("row", ORDERED, ids=lambda row: " < ".join(row))
def test_order(row: list[str]) -> None:
    for older, newer in zip(row, row[1:]):
        assert versions.is_older(older, newer), (older, newer)
        assert not versions.is_older(newer, older), (newer, older)
    assert sorted(reversed(row), key=versions.key) == row


def test_spellings_of_one_version_are_the_same() -> None:
    """``-``/``~`` and letter case spell one version: the same-version rules see them as one."""
    assert versions.same("1.0.0-rc1", "1.0.0~RC1") and versions.same("1.0", "1.0")
    assert not versions.same("1.0", "1.0.0") and not versions.same("1.0.0", "1.0.0+b1")


def test_equal_versions_are_not_older() -> None:
    assert not versions.is_older("1.0.0", "1.0.0")
    # Equal by every rule but the spelling: ordered (totally) by it, consistently.
    assert versions.is_older("1.0", "1.00") != versions.is_older("1.00", "1.0")


@pytest.mark.parametrize(
    "version",
    [
        "1.0.0",
        "23.12.1",
        "24.0.7",
        "0.1",
        "1",
        "1.0.0-rc1",
        "1.0.0~rc1",
        "2.0-beta.2+build.7",
        "1.4a",
    ],
)
def test_sensible_versions_parse(version: str) -> None:
    assert versions.check(version) is None


@pytest.mark.parametrize(
    "version, message",
    [
        ("", "is empty"),
        ("1..2", "has an empty part in its release"),
        ("1.", "has an empty part in its release"),
        (".1", "has an empty part in its release"),
        ("1.0-", "ends with '-'"),
        ("1.0~", "ends with '~'"),
        ("1.0+", "ends with '+'"),
        ("1.0-rc1~2", "has two pre-release markers"),
        ("1.0~rc1-2", "has two pre-release markers"),
        ("1.0-rc..1", "has an empty part in its pre-release"),
        ("1.0+b+c", "more than one '+'"),
        ("1.0+b..c", "has an empty part in its build metadata"),
        ("1.0+b-2", "'-' or '~' after '+'"),
        ("1.0+b~rc1", "'-' or '~' after '+'"),
        ("-1.0", "must start with the release"),
        ("+1", "starts with '+'"),
        ("1.0_1", "holds '_'"),
        ("../1", "holds '/'"),
        ("1/../../x", "holds '/'"),
        ("1 .0", "holds ' '"),
        ("1.\u00e9", "holds"),
        ("1" * 65, "longer than 64"),
        ("v1.2", "a release starts with a digit"),
        ("V0.9", "a release starts with a digit"),
    ],
)
def test_malformed_versions_say_what_is_wrong(version: str, message: str) -> None:
    with pytest.raises(versions.VersionError) as info:
        versions.key(version)
    assert message in str(info.value)
    assert info.value.exit_code == 2
    assert str(info.value) == f"{version!r} {versions.check(version)}" or len(version) > 64


# ---------------------------------------------------------------- the downgrade decision


def test_release_installs_over_its_pre_release() -> None:
    """Attack/bug: 1.0.0 after its rc was refused as a downgrade (pre-releases sorted above releases)."""
    trust.check_downgrade("demo", "1.0.0", "1.0.0-rc1", False)
    trust.check_downgrade("demo", "1.0.0", "1.0.0~rc2", False)


def test_pre_release_over_its_release_is_a_downgrade() -> None:
    """Attack: an old, signed 1.0.0-rc1 replayed on a site running 1.0.0 installed without
    --allow-downgrade, because pre-releases sorted above their release."""
    with pytest.raises(TrustError, match=r"refusing the older 1\.0\.0-rc1") as info:
        trust.check_downgrade("demo", "1.0.0-rc1", "1.0.0", False)
    assert info.value.exit_code == 3 and "--allow-downgrade" in str(info.value)
    trust.check_downgrade("demo", "1.0.0-rc1", "1.0.0", True)
    with pytest.raises(TrustError):
        trust.check_downgrade("demo", "1.0.0-rc2", "1.0.0-rc10", False)


def test_malformed_new_version_is_refused() -> None:
    """Attack: a version the grammar refuses must not reach the order (or a path), even if the lock let it."""
    with pytest.raises(TrustError, match=r"refusing the bundle's version '\.\./x': it holds '/'") as info:
        trust.check_downgrade("demo", "../x", "1.0.0", True)
    assert info.value.exit_code == 3


@pytest.mark.parametrize("installed", ["1..0", "", 7])
def test_malformed_installed_version_means_a_damaged_journal(tmp_path: Path, installed: object) -> None:
    """Attack: a state.json edited to an unparsable version must not make every version 'newer'."""
    (tmp_path / "state.json").write_text(
        json.dumps({"format": 1, "done": {}, "installed": {"demo": {"version": installed}}})
    )
    recorded = Journal.read(tmp_path)["installed"]["demo"]["version"]
    with pytest.raises(InstallError, match=r"journal .* is damaged") as info:
        trust.check_downgrade("demo", "2.0.0", recorded, True)
    assert "move it away" in str(info.value) and info.value.exit_code == 6
