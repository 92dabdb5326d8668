"""The site's root of trust: the README's stock-tool recipes and install.sh, against an attacker.

Every case runs the real thing: the README's fenced blocks exactly as written (taken from
README.md by their marker comment and pasted into ``sh``), GNU tar, ssh-keygen, sha256sum,
and Debian's ``/usr/bin/python3 -I -S`` through ``PATH=/usr/bin:/bin``. The attacker's code
(``installer/run.py`` or ``install.sh``) touches a marker file when it runs, so each refusal
also proves that no bundle code ran. docs/threats.md lists these cases.

Attacks played here:
- a key retired by ``valid-before`` in the past, or limited to another namespace, in the
  operator's allowed_signers, signing a bundle with modified installer code (install.sh: exit 3;
  the recipe refuses);
- a ``cert-authority`` line in the key file (install.sh: exit 2);
- an older, validly signed lock.json, lock.json.sig and installer appended after the real ones
  (GNU tar would extract the last copy): refused as a name twice (exit 4), its installer not run;
- an unsigned lock.json placed first: refused (exit 4);
- a file ``NAME.tar.999`` beside the parts that the signed parts.json does not name: never read;
  a parts.json whose signature does not verify: exit 3;
- a symlink member named ``installer/run.py``: refused (exit 4);
- a replaced ``install.sh`` in the bundle: the README's first command refuses before running it;
- a ``GNU.sparse`` PAX member standing for ``installer/run.py`` with other bytes: refused by its
  hash (stock tar lists it as a plain file, so a sparse member carrying the signed bytes is not
  detectable with stock tools; the Python verify refuses PAX records it does not write).
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import re
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from bundler import signing
from bundler.lock import Lock

from .conftest import CLUSTER_YML, Keys, Project, run_cli
from .readme import readme_block
from .test_verify import Item, info, read_items, replace, resign, write_items

SITE_PATH = "/usr/bin:/bin"  # Debian's python3 and stock tools only
ROOT = Path(__file__).resolve().parents[1]
INSTALL_SH = ROOT / "bundler" / "installer" / "install.sh"
RUN_PY = "installer/run.py"


@dataclasses.dataclass
class Site:
    """A control node's folder: the bundle, the operator's allowed_signers, a private TMPDIR."""

    root: Path
    bundle: Path
    signers: Path
    tmp: Path
    marker: Path

    def listing(self) -> set[str]:
        return {str(p.relative_to(self.root)) for p in self.root.rglob("*")}

    def env(self) -> dict[str, str]:
        return {
            "PATH": SITE_PATH,
            "HOME": str(self.root),
            "TMPDIR": str(self.tmp),
            "BUNDLE": self.bundle.name,
            "SIGNERS": self.signers.name,
        }

    def recipe(self, marker: str, shell: str = "sh") -> subprocess.CompletedProcess[str]:
        """Paste the README's block into ``shell``, in this folder, with BUNDLE and SIGNERS set."""
        return subprocess.run(
            [shell], input=readme_block(marker), cwd=self.root, env=self.env(), capture_output=True, text=True
        )

    def install_sh(self, *args: str) -> subprocess.CompletedProcess[str]:
        """The checked install.sh (the repository's own, as the first command runs it)."""
        return subprocess.run(
            [
                "sh",
                str(INSTALL_SH),
                "--bundle",
                self.bundle.name,
                "--pubkey",
                self.signers.name,
                "--workdir",
                "work",
                *args,
            ],
            cwd=self.root,
            env=self.env(),
            capture_output=True,
            text=True,
        )

    def clean(self) -> bool:
        """No bundle code ran and nothing was left in TMPDIR."""
        return not self.marker.exists() and not any(self.tmp.iterdir())


def make_site(tmp_path: Path, bundle: Path, signers_line: str) -> Site:
    root = tmp_path / "site"
    root.mkdir()
    (root / "tmp").mkdir()
    shutil.copy(bundle, root / bundle.name)
    (root / "allowed_signers").write_text(signers_line + "\n")
    (root / "cluster.yml").write_text("nodes: []\n")  # the installer, once reached, stops with exit 2
    return Site(root, root / bundle.name, root / "allowed_signers", root / "tmp", tmp_path / "PWNED")


def signers(keys: Keys, options: str = "") -> str:
    return f"airbundle {options + ' ' if options else ''}{keys.pub.openssh_line()}"


def with_code(items: list[Item], key: signing.PrivateKey, member: str, code: bytes) -> list[Item]:
    """The bundle with ``member`` replaced by ``code``, its lock updated and signed by ``key``."""
    lock = Lock.from_bytes(dict((ti.name, d) for ti, d in items)["lock.json"])
    digest = hashlib.sha256(code).hexdigest()
    members = tuple(
        dataclasses.replace(m, size=len(code), sha256=digest) if m.path == member else m for m in lock.members
    )
    return resign(replace(items, member, code), key, dataclasses.replace(lock, members=members).to_bytes())


def evil_run_py(items: list[Item], marker: Path) -> bytes:
    """The bundle's installer/run.py with a first line that leaves ``marker`` behind."""
    return f"open({str(marker)!r}, 'w').close()\n".encode() + dict((ti.name, d) for ti, d in items)[RUN_PY]


def evil(items: list[Item], key: signing.PrivateKey, marker: Path) -> list[Item]:
    """A validly signed bundle (by ``key``) whose installer leaves ``marker`` when it runs."""
    return with_code(items, key, RUN_PY, evil_run_py(items, marker))


# ---------------------------------------------------------------- the good case


@pytest.mark.parametrize("shell", ["sh", "bash"])
def test_first_command_runs_the_checked_installer(
    built: Path, keys: Keys, tmp_path: Path, shell: str
) -> None:
    site = make_site(tmp_path, built, signers(keys))
    before = site.listing()
    run = site.recipe("site-install", shell)
    # Reached install.sh, which checked again and started the installer: it read the inventory.
    assert run.returncode == 2, run.stderr
    assert 'Good "airbundle" signature for airbundle' in run.stdout
    assert "cluster.yml" in run.stderr and "no 'nodes:' list" in run.stderr
    assert site.clean() and site.listing() == before


def test_stock_verify_passes_a_good_bundle(built: Path, keys: Keys, tmp_path: Path) -> None:
    site = make_site(tmp_path, built, signers(keys))
    before = site.listing()
    run = site.recipe("stock-verify")
    assert run.returncode == 0, run.stderr
    assert run.stdout.endswith("bundle OK\n")
    assert site.clean() and site.listing() == before


def test_install_sh_installs_from_its_checked_copies(built: Path, keys: Keys, tmp_path: Path) -> None:
    """install.sh alone (a .pub or an allowed_signers line with options) passes a good bundle."""
    site = make_site(tmp_path, built, signers(keys, 'valid-after="20200101",namespaces="airbundle"'))
    (site.root / "cluster.yml").write_text("nodes:\n  - {address: 127.0.0.1, user: root, role: [worker]}\n")
    for pubkey in (site.signers.name, str(keys.pub_path)):
        run = subprocess.run(
            ["sh", str(INSTALL_SH), "--bundle", site.bundle.name, "--pubkey", pubkey, "--inventory",
             "cluster.yml", "--workdir", "work", "--dry-run", "--offline", "--yes"],
            cwd=site.root, env=site.env(), capture_output=True, text=True,
        )  # fmt: skip
        assert run.returncode == 0, run.stderr
        assert "members verified" in run.stdout
    assert site.clean() and not (site.root / "work").exists()


# ---------------------------------------------------------------- the operator's key options


@pytest.mark.parametrize(
    "options",
    ['valid-before="20200101Z"', 'namespaces="file"', 'valid-after="20990101"'],
    ids=["retired-key", "other-namespace", "not-yet-valid"],
)
def test_key_options_refuse_before_bundle_code_runs(
    built: Path, keys: Keys, tmp_path: Path, options: str
) -> None:
    """A bundle with modified installer code, signed by a key the operator limited: never run."""
    bad = write_items(tmp_path / built.name, evil(read_items(built), keys.key, tmp_path / "PWNED"))
    site = make_site(tmp_path, bad, signers(keys, options))
    run = site.install_sh("--inventory", "cluster.yml", "--dry-run")
    assert run.returncode == 3, run.stderr
    assert "the signature does not verify" in run.stderr
    assert site.clean()
    recipe = site.recipe("site-install")
    assert recipe.returncode != 0 and "Good" not in recipe.stdout
    verify = site.recipe("stock-verify")
    assert verify.returncode != 0 and "bundle OK" not in verify.stdout
    assert site.clean()


def test_cert_authority_line_is_refused(built: Path, keys: Keys, tmp_path: Path) -> None:
    site = make_site(tmp_path, built, signers(keys, "cert-authority"))
    run = site.install_sh("--inventory", "cluster.yml", "--dry-run")
    assert run.returncode == 2
    assert "allowed_signers:1: cert-authority keys are not supported" in run.stderr
    assert site.clean()


def test_key_file_without_an_ed25519_key(built: Path, tmp_path: Path) -> None:
    site = make_site(tmp_path, built, "airbundle ssh-rsa AAAAB3NzaC1yc2E")
    run = site.install_sh("--inventory", "cluster.yml")
    assert run.returncode == 2 and "allowed_signers:1: no ssh-ed25519 key" in run.stderr


# ---------------------------------------------------------------- the bundle's listing


def test_appended_older_lock_and_installer(
    built: Path, project: Project, keys: Keys, tmp_path: Path, cache_dir: Path
) -> None:
    """An older, validly signed lock with its own installer appended: GNU tar would pick it."""
    (project.root / "payloads/notes.txt").write_text("older notes\n")
    result = run_cli(
        "build", project.manifest, "-o", tmp_path / "old", "--key", keys.key_path, "--cache", cache_dir
    )
    assert result.exit_code == 0, result.stderr
    old = evil(read_items(Path(result.stdout.strip().splitlines()[-1])), keys.key, tmp_path / "PWNED")
    tail = [
        (ti, d)
        for ti, d in old
        if ti.name in ("lock.json", "lock.json.sig") or ti.name.startswith("installer/")
    ]
    bad = write_items(tmp_path / built.name, [*read_items(built), *tail])
    site = make_site(tmp_path, bad, signers(keys))
    run = site.install_sh("--inventory", "cluster.yml", "--dry-run")
    assert run.returncode == 4, run.stderr
    assert "installer/bundler/__init__.py is in the bundle more than once" in run.stderr
    for marker in ("site-install", "stock-verify"):
        recipe = site.recipe(marker)
        assert recipe.returncode == 4 and "REFUSED: in the bundle twice" in recipe.stderr
        assert "lock.json\n" in recipe.stdout and "bundle OK" not in recipe.stdout
    assert site.clean()


def test_unsigned_lock_first(built: Path, keys: Keys, tmp_path: Path) -> None:
    """An unsigned lock.json naming the attacker's installer, placed before the signed one."""
    items = read_items(built)
    forged = with_code(items, keys.key, RUN_PY, evil_run_py(items, tmp_path / "PWNED"))
    lock = dict((ti.name, d) for ti, d in forged)["lock.json"]
    bad = write_items(tmp_path / built.name, [info("lock.json", lock), *items])
    site = make_site(tmp_path, bad, signers(keys))
    run = site.install_sh("--inventory", "cluster.yml", "--dry-run")
    assert run.returncode == 4 and "lock.json is in the bundle more than once" in run.stderr
    for marker in ("site-install", "stock-verify"):
        recipe = site.recipe(marker)
        assert recipe.returncode == 4 and "REFUSED" in recipe.stderr
    assert site.clean()


@pytest.mark.parametrize("target", [RUN_PY, "installer/bundler/installer/main.py", "install.sh"])
def test_symlink_installer_member(built: Path, keys: Keys, tmp_path: Path, target: str) -> None:
    """A link where an installer file should be: sha256sum -c would hash through it."""
    items = [
        info(target, type_=tarfile.SYMTYPE, linkname="/etc/hostname") if ti.name == target else (ti, d)
        for ti, d in read_items(built)
    ]
    site = make_site(tmp_path, write_items(tmp_path / built.name, items), signers(keys))
    run = site.install_sh("--inventory", "cluster.yml", "--dry-run")
    assert run.returncode == 4 and "is not a regular file: l" in run.stderr and target in run.stderr
    for marker in ("site-install", "stock-verify"):
        recipe = site.recipe(marker)
        assert recipe.returncode == 4 and "REFUSED: not regular files" in recipe.stderr
        assert f"{target} -> /etc/hostname" in recipe.stdout
    assert site.clean()


def test_replaced_install_sh_never_runs(built: Path, keys: Keys, tmp_path: Path) -> None:
    """The bundle's own install.sh changed: the README's first command refuses before running it."""
    items = read_items(built)
    script = dict((ti.name, d) for ti, d in items)["install.sh"]
    evil_sh = f"#!/bin/sh\ntouch '{tmp_path / 'PWNED'}'\n".encode() + script
    site = make_site(
        tmp_path, write_items(tmp_path / built.name, replace(items, "install.sh", evil_sh)), signers(keys)
    )
    run = site.recipe("site-install")  # its size already differs from the signed one
    assert run.returncode == 4 and "REFUSED: size not as in lock" in run.stderr
    assert re.search(r"^\d+ install\.sh$", run.stdout, re.M)
    verify = site.recipe("stock-verify")
    assert verify.returncode != 0 and "bundle OK" not in verify.stdout
    assert site.clean()
    # install.sh itself refuses such a bundle too (its own member does not match the lock).
    again = site.install_sh("--inventory", "cluster.yml", "--dry-run")
    assert again.returncode == 4 and "install.sh is not the size lock.json gives it" in again.stderr
    assert site.clean()
    # the same size with other bytes: the SHA-256 check refuses it
    same = evil_sh[: len(script)]
    (tmp_path / "same").mkdir()
    site2 = make_site(tmp_path / "same", write_items(tmp_path / "same.tar", replace(items, "install.sh", same)),
                      signers(keys))  # fmt: skip
    run = site2.recipe("site-install")
    assert run.returncode != 0 and "install.sh: FAILED" in run.stdout + run.stderr
    assert site2.clean() and site.clean()


def _sparse(name: str, data: bytes) -> Item:
    """A PAX GNU.sparse 1.0 member that GNU tar lists and extracts as ``name`` holding ``data``."""
    sparse_map = b"1\n0\n%d\n" % len(data)
    body = sparse_map + b"\0" * (512 - len(sparse_map)) + data
    ti = tarfile.TarInfo("GNUSparseFile.0/run.py")
    ti.pax_headers = {
        "GNU.sparse.major": "1",
        "GNU.sparse.minor": "0",
        "GNU.sparse.name": name,
        "GNU.sparse.realsize": str(len(data)),
    }
    return ti, body


def test_sparse_member_with_other_bytes(built: Path, keys: Keys, tmp_path: Path) -> None:
    items = read_items(built)
    # the signed size, other bytes: only the SHA-256 tells them apart
    code = evil_run_py(items, tmp_path / "PWNED")[: len(dict((ti.name, d) for ti, d in items)[RUN_PY])]
    bad = [_sparse(RUN_PY, code) if ti.name == RUN_PY else (ti, d) for ti, d in items]
    site = make_site(tmp_path, write_items(tmp_path / built.name, bad), signers(keys))
    listed = subprocess.run(["tar", "-tvf", site.bundle], capture_output=True, text=True, check=True).stdout
    assert re.search(rf"^-\S+ .* {RUN_PY}$", listed, re.M)  # stock tar shows a plain file
    run = site.recipe("site-install")
    assert run.returncode != 0 and f"{RUN_PY}: FAILED" in run.stdout + run.stderr
    again = site.install_sh("--inventory", "cluster.yml", "--dry-run")
    assert again.returncode == 4 and f"{RUN_PY}: FAILED" in again.stderr
    assert site.clean()


# ---------------------------------------------------------------- parts


@pytest.fixture
def parts(project: Project, keys: Keys, tmp_path: Path, cache_dir: Path) -> Path:
    result = run_cli(
        "build", project.manifest, "-o", tmp_path / "parts", "--key", keys.key_path,
        "--cache", cache_dir, "--split", "64K",
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    return Path(result.stdout.strip())


def _parts_install(index: Path, keys: Keys, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    (tmp_path / "tmp").mkdir(exist_ok=True)
    (index.parent / "cluster.yml").write_text(
        "nodes:\n  - {address: 127.0.0.1, user: root, role: [worker]}\n"
    )
    return subprocess.run(
        ["sh", str(INSTALL_SH), "--bundle", index.name, "--pubkey", str(keys.pub_path),
         "--inventory", "cluster.yml", "--workdir", "work", "--dry-run", "--offline", "--yes"],
        cwd=index.parent, capture_output=True, text=True,
        env={"PATH": SITE_PATH, "HOME": str(tmp_path), "TMPDIR": str(tmp_path / "tmp")},
    )  # fmt: skip


def test_extra_part_is_never_read(parts: Path, built: Path, keys: Keys, tmp_path: Path) -> None:
    """NAME.tar.999 and .000a beside the parts, holding a signed lock and an installer of their own."""
    tail = [
        (ti, d)
        for ti, d in evil(read_items(built), keys.key, tmp_path / "PWNED")
        if ti.name in ("lock.json", "lock.json.sig", "install.sh") or ti.name.startswith("installer/")
    ]
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for ti, d in tail:
            tar.addfile(ti, io.BytesIO(d))
    # .000a sorts between .000 and .001: read as a part, it would break the stream.
    for extra in ("demo-1.0.0.tar.999", "demo-1.0.0.tar.000a"):
        (parts.parent / extra).write_bytes(buf.getvalue())
    run = _parts_install(parts, keys, tmp_path)
    assert run.returncode == 0, run.stderr  # the signed parts only: the good installer ran
    assert "members verified" in run.stdout
    assert not (tmp_path / "PWNED").exists() and not any((tmp_path / "tmp").iterdir())


def test_parts_file_and_parts_as_signed(parts: Path, keys: Keys, tmp_path: Path) -> None:
    doc = parts.read_text()
    lines = doc.splitlines(keepends=True)
    first = next(line for line in lines if line.startswith('  {"name": '))
    parts.write_text(doc.replace(first, first.replace(".tar.000", ".tar.999"), 1))
    run = _parts_install(parts, keys, tmp_path)
    assert run.returncode == 3
    assert f"{parts.name}: the signature does not verify" in run.stderr
    parts.write_text(doc)
    part = parts.with_name("demo-1.0.0.tar.001")
    data = bytearray(part.read_bytes())
    data[100] ^= 1
    part.write_bytes(bytes(data))
    run = _parts_install(parts, keys, tmp_path)
    assert run.returncode == 4 and "demo-1.0.0.tar.001: FAILED" in run.stderr
    parts.with_name(parts.name + ".sig").unlink()
    run = _parts_install(parts, keys, tmp_path)
    assert run.returncode == 3 and ".parts.json.sig is missing" in run.stderr


# ---------------------------------------------------------------- findings of the second review


def test_stock_verify_sees_names_that_hide_behind_lock_json(built: Path, keys: Keys, tmp_path: Path) -> None:
    """Attack: unlisted members named ``files/evil  lock.json`` (two spaces: the member-path
    charset allows spaces) slipped through a filter meant for lock.json itself, and the recipe
    printed "bundle OK". The filter now matches whole lines; the extra member is a difference."""
    items = read_items(built)
    code = b"#!/bin/sh\necho pwned\n"
    items.insert(5, info("files/evil  lock.json", code, mode=0o755))
    items.insert(6, info("installer/bundler/x  lock.json.sig", b"x"))
    site = make_site(tmp_path, write_items(tmp_path / "hide.tar", items), signers(keys))
    run = site.recipe("stock-verify")
    assert run.returncode != 0 and "bundle OK" not in run.stdout
    assert "files/evil  lock.json" in run.stdout + run.stderr


def test_stock_verify_refuses_a_newline_in_a_name(built: Path, keys: Keys, tmp_path: Path) -> None:
    """Attack: ``bin/rke`` removed and a member named ``bin/x  lock.json<newline><sha of rke>  bin/rke``
    added: its name, printed by --to-command, forged the expected line for bin/rke. GNU tar lists
    the newline as ``\\n``; a backslash in a listed name is refused."""
    items = read_items(built)
    rke = dict((ti.name, d) for ti, d in items)["bin/rke"]
    forged = f"bin/x  lock.json\n{hashlib.sha256(rke).hexdigest()}  bin/rke"
    items = [(ti, d) for ti, d in items if ti.name != "bin/rke"]
    items.insert(10, info(forged, b"#!/bin/sh\necho not rke\n", mode=0o755))
    site = make_site(tmp_path, write_items(tmp_path / "nl.tar", items), signers(keys))
    run = site.recipe("stock-verify")
    assert run.returncode == 4 and "bundle OK" not in run.stdout
    assert "REFUSED: control character or backslash in a name" in run.stderr


def test_an_abbreviated_option_cannot_name_another_bundle(built: Path, keys: Keys, tmp_path: Path) -> None:
    """Attack: the recipe and install.sh check the bundle named by ``--bundle``, but the Python
    installer took ``--bund OTHER.tar`` (argparse abbreviations) and installed a bundle nobody
    checked. Abbreviations are refused (exit 2) before anything is read."""
    site = make_site(tmp_path, built, signers(keys))
    other = shutil.copy(built, site.root / "other.tar")
    run = site.install_sh("--bund", Path(other).name, "--inventory", "cluster.yml")
    assert run.returncode == 2 and "unrecognized arguments: --bund" in run.stderr
    assert site.clean() and not (site.root / "work" / "demo-1.0.0").exists()


@pytest.mark.parametrize(
    "retired",
    ['airbundle VALID-BEFORE="20200101Z" {K}', "alice {K}", "airbundle valid-before=20200101Z {K}"],
    ids=["option-in-capitals", "other-principal", "unquoted-option"],
)
def test_the_installer_reads_the_key_file_as_ssh_keygen_does(
    built: Path, keys: Keys, other_keys: Keys, tmp_path: Path, retired: str
) -> None:
    """Attack (with a rename race): the recipe checks a good bundle, then the attacker renames one
    signed by a key the operator retired over the path before the Python installer opens it.
    The installer used to read the retired line more loosely than ssh-keygen (capitals, other
    principals, unquoted values ignored) and installed it. It now trusts no key ssh-keygen would
    not: the swapped bundle is refused (exit 2 or 3) and its code never runs."""
    site = make_site(tmp_path, built, signers(keys))
    text = retired.format(K=other_keys.pub.openssh_line()) + "\n" + signers(keys) + "\n"
    site.signers.write_text(text)
    (site.root / "nodes.yml").write_text(CLUSTER_YML)
    items = evil(read_items(built), other_keys.key, site.marker)
    installer = tmp_path / "checked"  # the installer the recipe checked, from the good bundle
    installer.mkdir()
    subprocess.run(["tar", "-xf", built, "-C", installer, "--wildcards", "installer/*"], check=True)
    write_items(site.bundle, items)  # the swapped-in bundle, as the Python installer finds it
    run = subprocess.run(
        ["/usr/bin/python3", "-I", "-S", str(installer / "installer" / "run.py"), "--bundle",
         site.bundle.name, "--pubkey", site.signers.name, "--inventory", "nodes.yml", "--dry-run"],
        cwd=site.root, env=site.env(), capture_output=True, text=True,
    )  # fmt: skip
    assert run.returncode in (2, 3), run.stdout + run.stderr
    assert other_keys.pub.fingerprint not in run.stdout and "the plan:" not in run.stdout
    assert not site.marker.exists()


def test_install_sh_help_runs_nothing_from_the_bundle(built: Path, keys: Keys, tmp_path: Path) -> None:
    """``sh install.sh --help`` printed "--pubkey PUB is required"; it now prints its own usage
    (static text: no bundle is read, no installer code runs) and exits 0."""
    site = make_site(tmp_path, built, signers(keys))
    run = subprocess.run(
        ["sh", str(INSTALL_SH), "--help"], cwd=site.root, env=site.env(), capture_output=True, text=True
    )
    assert run.returncode == 0 and run.stdout.startswith("usage: sh install.sh --pubkey FILE")
    assert "README's first command" in run.stdout and site.clean()


# ---------------------------------------------------------------- sizes and shapes before anything is written


def test_a_compressed_bundle_is_refused_by_every_check(built: Path, keys: Keys, tmp_path: Path) -> None:
    """GNU tar decompresses a gzip on read unasked: the checks would pass on bytes airbundle never wrote."""
    import gzip

    packed = tmp_path / "gz" / built.name
    packed.parent.mkdir()
    packed.write_bytes(gzip.compress(built.read_bytes()))
    site = make_site(tmp_path, packed, signers(keys))
    run = site.install_sh("--inventory", "cluster.yml", "--dry-run")
    assert run.returncode == 4 and "not an uncompressed POSIX tar" in run.stderr, run.stderr
    for marker in ("site-install", "stock-verify"):
        recipe = site.recipe(marker)
        assert recipe.returncode == 4 and "REFUSED: not an uncompressed tar" in recipe.stderr
    assert site.clean()


def test_an_oversized_lock_is_refused_before_it_is_written(built: Path, keys: Keys, tmp_path: Path) -> None:
    """A lock.json header declaring 17 MiB: refused from the listing, before extraction."""
    big = b"{" + b" " * (17 * 1024 * 1024) + b"}"
    site = make_site(tmp_path, write_items(tmp_path / built.name, replace(read_items(built), "lock.json", big)),
                     signers(keys))  # fmt: skip
    run = site.install_sh("--inventory", "cluster.yml", "--dry-run")
    assert run.returncode == 4 and "lock.json is 17825794 bytes, over the 16777216-byte limit" in run.stderr
    for marker in ("site-install", "stock-verify"):
        recipe = site.recipe(marker)
        assert recipe.returncode == 4 and "REFUSED: lock.json or lock.json.sig too large" in recipe.stderr
    assert site.clean()


def test_an_installer_member_larger_than_signed_is_never_extracted(
    built: Path, keys: Keys, tmp_path: Path
) -> None:
    """installer/run.py with attacker bytes under the signed lock: its declared size gives it away first."""
    items = read_items(built)
    code = evil_run_py(items, tmp_path / "PWNED") + b"#" * 4096
    site = make_site(
        tmp_path, write_items(tmp_path / built.name, replace(items, RUN_PY, code)), signers(keys)
    )
    run = site.install_sh("--inventory", "cluster.yml", "--dry-run")
    assert run.returncode == 4, run.stderr
    assert f"{RUN_PY} is not the size lock.json gives it" in run.stderr
    recipe = site.recipe("site-install")
    assert recipe.returncode == 4 and "REFUSED: size not as in lock" in recipe.stderr
    assert f"{RUN_PY}" in recipe.stdout
    assert site.clean()


def test_a_dot_slash_twin_is_a_name_twice_for_the_recipes(built: Path, keys: Keys, tmp_path: Path) -> None:
    items = read_items(built)
    twin = info("./" + RUN_PY, evil_run_py(items, tmp_path / "PWNED"))
    site = make_site(
        tmp_path, write_items(tmp_path / built.name, [*items[:2], twin, *items[2:]]), signers(keys)
    )
    for marker in ("site-install", "stock-verify"):
        recipe = site.recipe(marker)
        assert recipe.returncode == 4 and "REFUSED: in the bundle twice" in recipe.stderr
    assert site.clean()


def test_a_pub_given_as_signers_says_how_to_make_the_file(built: Path, keys: Keys, tmp_path: Path) -> None:
    site = make_site(tmp_path, built, keys.pub.openssh_line())
    recipe = site.recipe("site-install")
    assert recipe.returncode == 2
    assert (
        'SIGNERS is a .pub, not an allowed_signers file: echo "airbundle $(cat allowed_signers)"'
        in recipe.stderr
    )
    assert site.clean()


def test_a_bundle_swapped_after_install_sh_checked_it_is_refused(
    built: Path, project: Project, keys: Keys, tmp_path: Path, cache_dir: Path
) -> None:
    """Another validly signed bundle copied over the checked one just as the installer starts:
    the installer's own decision finds another lock than install.sh checked and stops (exit 4)."""
    (project.root / "payloads/notes.txt").write_text("another release\n")
    result = run_cli(
        "build", project.manifest, "-o", tmp_path / "other", "--key", keys.key_path, "--cache", cache_dir
    )
    assert result.exit_code == 0, result.stderr
    other = Path(result.stdout.strip().splitlines()[-1])
    site = make_site(tmp_path, built, signers(keys))
    (site.root / "cluster.yml").write_text("nodes:\n  - {address: 127.0.0.1, user: root, role: [worker]}\n")
    shim = tmp_path / "shim"
    shim.mkdir()
    # python3 as found on PATH: swaps the bundle when install.sh starts the installer with it
    (shim / "python3").write_text(
        f'#!/bin/sh\ncase "$*" in *installer/run.py*) cp {other} {site.bundle} ;; esac\nexec /usr/bin/python3 "$@"\n'
    )
    (shim / "python3").chmod(0o755)
    run = subprocess.run(
        ["sh", str(INSTALL_SH), "--bundle", site.bundle.name, "--pubkey", site.signers.name,
         "--inventory", "cluster.yml", "--workdir", "work", "--dry-run", "--offline", "--yes"],
        cwd=site.root, env={**site.env(), "PATH": f"{shim}:{SITE_PATH}"}, capture_output=True, text=True,
    )  # fmt: skip
    assert run.returncode == 4, run.stderr
    assert "lock.json is not the one install.sh checked" in run.stderr
    assert "the bundle file was replaced meanwhile" in run.stderr
    assert site.clean() and not (site.root / "work").exists()
