"""What reaches the operator's terminal, and how the commands end when the terminal goes away:
an unchecked lock's strings shown, never obeyed; a closed output pipe (``| head``) ends quietly
with 141 as a shell tool would; Ctrl-C while Python is still loading ends with 130 and no
traceback; keys given the wrong way round are named for what they are. Real processes (the
``airbundle`` command, ``sh install.sh``), real pipes, real signals."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .conftest import Keys, run_cli
from .test_verify import read_items, replace, write_items

ROOT = Path(__file__).resolve().parents[1]
AIRBUNDLE = str(Path(sys.executable).with_name("airbundle"))


def test_inspect_shows_an_unchecked_locks_escapes_as_text(built: Path, tmp_path: Path) -> None:
    items = read_items(built)
    lock = dict((ti.name, d) for ti, d in items)["lock.json"]
    assert b'"src": "' in lock
    forged = lock.replace(b'"src": "', b'"src": "\\u001b[2A\\u001b[2K  signer: (checked) ', 1)
    bad = write_items(tmp_path / built.name, replace(items, "lock.json", forged))
    result = run_cli("inspect", bad)
    assert result.exit_code == 0, result.stderr
    assert "\x1b" not in result.stdout and "\\x1b[2A\\x1b[2K  signer: (checked)" in result.stdout
    assert "(not checked: pass --pubkey)" in result.stdout


def test_a_closed_output_pipe_ends_quietly_with_141(built: Path, keys: Keys, tmp_path: Path) -> None:
    inventory = tmp_path / "cluster.yml"
    inventory.write_text("nodes:\n  - {address: 127.0.0.1, user: root, role: [controlplane, etcd, worker]}\n")
    for argv in (
        [AIRBUNDLE, "inspect", str(built)],
        ["sh", str(ROOT / "bundler/installer/install.sh"), "--bundle", str(built), "--pubkey", str(keys.pub_path),
         "--inventory", str(inventory), "--workdir", str(tmp_path / "w"), "--dry-run", "--offline", "--yes"],
    ):  # fmt: skip
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert proc.stdout is not None and proc.stderr is not None
        proc.stdout.close()  # the reader went away before the first line
        err = proc.stderr.read().decode()
        assert proc.wait(120) == 141, err
        assert "Traceback" not in err and "Exception ignored" not in err and "error" not in err, err


def _before_our_code(text: str) -> bool:
    """SIGINT landed where no program can catch it: in Python's own start-up (``site``), or in the
    first line of pip's generated launcher, which imports our entry point."""
    if "init_import_site" in text:
        return True
    return text.count('File "') == 1 and "from bundler.__main__ import console" in text


@pytest.mark.parametrize("delay", [0.02, 0.08, 0.15, 0.3])
def test_ctrl_c_while_python_loads_is_no_traceback(
    built: Path, keys: Keys, tmp_path: Path, delay: float
) -> None:
    """SIGINT at several moments of start-up: whenever it lands, exit 130 (or SIGINT's own death
    before Python handles signals at all), never a traceback."""
    unpacked = tmp_path / "unpacked"
    unpacked.mkdir()
    subprocess.run(["tar", "-xf", built, "-C", unpacked, "--wildcards", "installer/*"], check=True)
    runs = (
        [AIRBUNDLE, "verify", str(built), "--pubkey", str(keys.pub_path)],
        ["/usr/bin/python3", "-I", "-S", str(unpacked / "installer/run.py"), "--help"],
    )
    for argv in runs:
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        time.sleep(delay)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
        text = err.decode()
        if "Traceback" in text and _before_our_code(text):
            continue
        assert proc.returncode in (130, -signal.SIGINT, 0), text  # 0: it had already finished
        assert "Traceback" not in text, text


def test_keys_given_the_wrong_way_round_are_named(keys: Keys, built: Path, tmp_path: Path) -> None:
    signed = run_cli("verify", built, "--pubkey", keys.key_path)
    assert signed.exit_code == 2
    assert "this is a private key; checking needs the public half" in signed.stderr
    assert "PRIVATE" not in signed.stderr
    folder = tmp_path / "wrong-way"
    folder.mkdir()
    project = folder / "m.yaml"
    project.write_text("name: x\nversion: 1.0.0\nplatform: {os: debian, codename: bookworm, arch: amd64}\n")
    built_again = run_cli("build", project, "--key", keys.pub_path, "-o", folder / "o")
    assert built_again.exit_code == 2
    assert "this is a public key (.pub); signing needs its private half" in built_again.stderr
    assert os.listdir(folder) == ["m.yaml"]
