"""The staged scripts: here, on the node the installer runs on (``run_steps``), or over SSH on
the nodes a step names (``run_on_nodes``).

Here, each script runs from a copy in a folder only this installer can write, made while its
bytes are checked against the lock. On a node, the script and the bundle files the step
declares travel in one tar stream into a fresh private folder there (``mktemp -d``, removed
afterwards), with a SHA256SUMS from the lock that ``sha256sum -c`` checks on the node before
anything runs, and the site values in a 0600 environment file (never on a command line). Each
node's output goes to its own log, ``logs/NN-STEP.NODE.log``. Which steps run where is the
plan's (``plan.step_nodes``); the journal is ``apply``'s.
"""

import io
import shlex
import subprocess
import tarfile
from pathlib import Path
from typing import Callable, Collection, Dict, IO, List, Optional, Tuple

from bundler import archive
from bundler.errors import InstallError
from bundler.installer import remote
from bundler.installer.inventory import Node, SiteValues
from bundler.installer.journal import Journal
from bundler.installer.plan import LOCAL
from bundler.installer.results import NodeResult
from bundler.lock import Lock, Step

ENV_FILE = "airbundle.env"
_EXIT = "airbundle-step-exit="


def run_steps(
    lock: Lock,
    bundle_dir: Path,
    logs: Path,
    env: Dict[str, str],
    journal: Journal,
    echo: Callable[[str], None],
    private: Path,
    names: Optional[Collection[str]] = None,
) -> List[str]:
    """Run the staged scripts (``names`` of them: the plan's) in order here; skip those the journal
    has; stop at the first failure, having recorded each step that finished.

    Each script runs from a copy in ``private`` (a folder only this installer can write), made
    while its bytes are checked against the lock, so nothing can swap it between check and run.

    Returns:
        The names of the steps run now.

    Raises:
        InstallError: a step failed (names the step and its log; exit 6).
    """
    logs.mkdir(parents=True, exist_ok=True)
    ran = []
    for index, step in enumerate(lock.steps, start=1):
        if (names is not None and step.name not in names) or journal.is_done("steps", LOCAL, step.name):
            continue  # the plan says so ("step NAME: done before, skipped")
        script = archive.verified_copy(
            bundle_dir / step.script, lock.member(step.script), private / f"{index:02d}-{step.name}"
        )
        log_path = logs / f"{index:02d}-{step.name}.log"
        with open(script, "rb") as f:
            argv = [str(script)] if f.read(2) == b"#!" else ["sh", str(script)]
        echo(f"step {step.name}: {step.script} (log: {log_path})")
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                argv, cwd=str(bundle_dir), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
            )
            assert proc.stdout is not None
            for line in proc.stdout:
                log.write(line)
                echo("  | " + line.decode(errors="replace").rstrip("\n"))
            code = proc.wait()
        if code != 0:
            raise InstallError(
                f"step {step.name} failed with exit code {code}; see {log_path}; "
                "fix it and run the same command again: it continues from this step"
            )
        journal.mark_done("steps", LOCAL, step.name)
        ran.append(step.name)
    return ran


def _index(lock: Lock, step: Step) -> int:
    """The step's number in the lock (01, 02, ...): its logs are named by it."""
    return lock.steps.index(step) + 1


def _env_file(values: Dict[str, str]) -> bytes:
    return "".join(f"export {k}={shlex.quote(v)}\n" for k, v in sorted(values.items())).encode()


def _step_tar(lock: Lock, step: Step, bundle_dir: Path, env: bytes, out: IO[bytes]) -> None:
    """The step's script and files under their bundle paths, their SHA256SUMS (from the lock) and the
    environment file, as one tar stream."""
    members = [step.script, *step.files]
    sums = "".join(f"{lock.member(m).sha256}  {m}\n" for m in members).encode()
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        for name, data, mode in (("SHA256SUMS", sums, 0o644), (ENV_FILE, env, 0o600)):
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), mode
            tar.addfile(info, io.BytesIO(data))
        for member in members:
            info = tar.gettarinfo(str(bundle_dir / member), arcname=member)
            info.mode = 0o755 if member == step.script else 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            with open(bundle_dir / member, "rb") as f:
                tar.addfile(info, f)


def _node_script(step: Step) -> str:
    """Shell run on the node: unpack into a private folder, check every file, run the step there
    (its output and exit code on stdout), remove the folder."""
    script = shlex.quote(step.script)
    return (
        'set -e; umask 077; d=$(mktemp -d "${TMPDIR:-/tmp}/airbundle-step.XXXXXX"); '
        'trap \'rm -rf "$d"\' EXIT; tar -x -o -C "$d"; cd "$d"; sha256sum -c --quiet SHA256SUMS >&2; '
        f'set +e; (. ./{ENV_FILE}; export BUNDLE_DIR="$d"; '
        f'case "$(head -c 2 {script})" in "#!") ./{script};; *) sh ./{script};; esac) </dev/null 2>&1; '
        f'echo "{_EXIT}$?"'
    )


def run_on_node(
    step: Step,
    node: Node,
    lock: Lock,
    bundle_dir: Path,
    log_path: Path,
    values: Dict[str, str],
    opts: remote.SshOptions,
) -> Tuple[NodeResult, List[str]]:
    """Run ``step`` on ``node`` (as root: sudo for another user); its result and output lines."""
    result = NodeResult(node, items=[step.name])
    env = {**values, "NODE_NAME": node.name, "NODE_ADDRESS": node.address, "NODE_ROLES": " ".join(node.roles)}
    data = _env_file(env)
    try:
        out = remote.stream(
            node,
            opts,
            f"{remote.sudo_prefix(node)}sh -c {shlex.quote(_node_script(step))}",
            lambda pipe: _step_tar(lock, step, bundle_dir, data, pipe),
        )
    except InstallError as exc:
        result.error = f"step {step.name}: {exc}"
        log_path.write_text(f"{result.error}\n")
        return result, []
    lines = out.splitlines()
    code = lines.pop()[len(_EXIT) :] if lines and lines[-1].startswith(_EXIT) else "?"
    log_path.write_text("".join(line + "\n" for line in lines))
    if code != "0":
        result.error = f"step {step.name} failed on {node.name} with exit code {code}; see {log_path}"
    else:
        result.done.append(step.name)
    return result, lines


def run_on_nodes(
    step: Step,
    nodes: List[Node],
    lock: Lock,
    bundle_dir: Path,
    logs: Path,
    values: SiteValues,
    opts: remote.SshOptions,
    echo: Callable[[str], None],
) -> List[NodeResult]:
    """Run ``step`` on ``nodes``: all at once, or one after the other (``serial``); every node
    finishes it even when one fails. Each node gets the shared values with its own over them."""
    logs.mkdir(parents=True, exist_ok=True)
    index = _index(lock, step)
    where = ", ".join(n.name for n in nodes)
    echo(f"step {step.name}: {step.script} on {where}{' (one after the other)' if step.serial else ''} "
         f"(logs: {logs}/{index:02d}-{step.name}.NODE.log)")  # fmt: skip

    def one(node: Node) -> Tuple[NodeResult, List[str]]:
        log_path = logs / f"{index:02d}-{step.name}.{node.name}.log"
        return run_on_node(step, node, lock, bundle_dir, log_path, values.for_node(node.name), opts)

    done = [one(n) for n in nodes] if step.serial else remote.for_each(nodes, one)
    for result, lines in done:
        for line in lines:
            echo(f"  {result.node.name} | {line}")
    return [r for r, _ in done]
