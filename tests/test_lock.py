"""lock.json: canonical encoding and strict parsing of untrusted bytes (M01–M08)."""

from __future__ import annotations

import json

import pytest

from bundler.lock import MAX_LOCK_BYTES, Binary, Lock, LockError, Member, Step, check_member_path

SHA_A = "a" * 64
SHA_B = "b" * 64


def sample() -> Lock:
    return Lock(
        name="demo",
        version="1.0.0",
        platform={"os": "debian", "codename": "bookworm", "arch": "amd64"},
        builder="airbundle 0.1.0",
        manifest_sha256=SHA_A,
        source_date_epoch=0,
        members=(
            Member("install.sh", 10, SHA_A, "installer", "0755"),
            Member("bin/rke", 20, SHA_B, "binary", "0755"),
            Member("scripts/01-x.sh", 5, SHA_A, "script", "0755"),
        ),
        binaries=(Binary("rke", "bin/rke", "/usr/local/bin/rke", "0755", "http://x/rke", SHA_B, 20),),
        steps=(Step("x", "scripts/01-x.sh", SHA_A),),
    )


def test_round_trip_is_exact() -> None:
    data = sample().to_bytes()
    assert Lock.from_bytes(data) == sample()
    assert Lock.from_bytes(data).to_bytes() == data
    assert data.endswith(b"}\n")
    json.loads(data)  # plain JSON for any tool


def test_one_member_per_line_path_before_sha() -> None:
    lines = [ln for ln in sample().to_bytes().decode().splitlines() if '"kind": ' in ln]
    assert len(lines) == 3
    assert all(ln.index('"path"') < ln.index('"sha256"') for ln in lines)
    assert sample().sha256sums().splitlines()[1] == f"{SHA_B}  bin/rke"


def _doc(**changes):
    doc = json.loads(sample().to_bytes())
    for key, value in changes.items():
        doc[key] = value
    return doc


def _member(**changes):
    doc = _doc()
    doc["members"][1].update(changes)
    return json.dumps(doc).encode()


@pytest.mark.parametrize(
    "data, message",
    [
        (b"{not json", "not valid JSON"),  # M01
        (b"\xff\xfe", "not valid JSON"),
        (json.dumps(_doc(format=2)).encode(), "format 2"),  # M02
        (json.dumps(["a"]).encode(), "not an object"),
        (
            sample().to_bytes().replace(b'"name": "demo"', b'"name": "demo", "name": "evil"'),
            "duplicate key",
        ),  # M03
        (_member(path="install.sh"), "listed twice"),
        (_member(path="INSTALL.sh"), "collides"),
        (_member(path="../etc/passwd"), "'..' segment"),  # M06
        (_member(path="/etc/passwd"), "absolute"),
        (_member(path="bin\\rke"), "backslash"),
        (_member(path="bin/r\u0000ke"), "NUL"),
        (_member(sha256="A" * 64), "64 lowercase hex"),  # M07
        (_member(sha256="ab"), "64 lowercase hex"),
        (_member(size=-1), "negative"),  # M08
        (_member(size=1.5), "wrong type"),
        (_member(size=True), "wrong type"),
        (_member(kind="device"), "unknown kind"),
        (_member(mode="4755"), "unknown kind or mode"),
        (_member(path="lock.json.sig"), "cannot list"),
        (json.dumps(_doc(members="x")).encode(), "wrong type"),
        (json.dumps({k: v for k, v in _doc().items() if k != "name"}).encode(), "lacks 'name'"),
    ],
)
def test_malformed_locks_are_refused(data: bytes, message: str) -> None:
    with pytest.raises(LockError, match=message) as info:
        Lock.from_bytes(data)
    assert info.value.exit_code == 4


def test_binary_must_be_a_member() -> None:
    doc = _doc()
    doc["members"] = [m for m in doc["members"] if m["path"] != "bin/rke"]
    with pytest.raises(LockError, match="'bin/rke' is used but not listed"):
        Lock.from_bytes(json.dumps(doc).encode())


def test_oversized_lock_is_refused_before_parsing() -> None:  # M05
    with pytest.raises(LockError, match="over the"):
        Lock.from_bytes(b" " * (MAX_LOCK_BYTES + 1))


@pytest.mark.parametrize("path", ["a/b.txt", "files/x y/z-1.2_3+4@5=6:7,8~9"])
def test_safe_member_paths(path: str) -> None:
    assert check_member_path(path) is None


@pytest.mark.parametrize("path", ["", "a//b", "./a", "a/.", "a/../b", 'a/"q"', "a/\nb", "x" * 256])
def test_unsafe_member_paths(path: str) -> None:
    assert check_member_path(path) is not None
