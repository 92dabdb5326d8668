"""The layering rules of DESIGN.md, checked on the source: imports point down only,
each outside library has one owner module, and nothing below the CLIs prints or exits."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parent.parent / "bundler"

# Lower number = lower layer. A module may import bundler modules of a lower rank only.
RANK: dict[str, float] = {
    "bundler": 0,
    "bundler.errors": 0,
    "bundler.compat": 0.5,
    "bundler.text": 0,
    "bundler.oci": 1,
    "bundler.debs": 1,
    "bundler.signing": 1,
    "bundler.versions": 1,
    "bundler.rkeimages": 1,
    "bundler.kinds": 1.5,
    "bundler.k0simages": 1,
    "bundler.k0sbuild": 4.5,
    "bundler.pinnedtool": 4.4,
    "bundler.lock": 2,
    "bundler.files": 1,
    "bundler.trust": 2.5,
    "bundler.archive": 3,
    "bundler.sbom": 3,
    "bundler.cache": 4,
    "bundler.manifest": 4,
    "bundler.fetch": 5,
    "bundler.images": 5,
    "bundler.registry": 6,
    "bundler.aptsource": 6,
    "bundler.rpms": 1,
    "bundler.rpmsolve": 5,
    "bundler.rpmrepo": 5,
    "bundler.rpmsource": 6.5,
    "bundler.solvhelper": 0,
    "bundler.build": 7,
    "bundler.cli": 8,
    "bundler.__main__": 9,
    "bundler.installer": 0,
    "bundler.installer._vendor": 0,
    "bundler.installer.inventory": 3,
    "bundler.installer.journal": 2,
    "bundler.installer.results": 3.5,
    "bundler.installer.rpmroute": 3,
    "bundler.installer.nodeos": 3,
    "bundler.installer.topology": 1,
    "bundler.installer.k0sctl": 3.2,
    "bundler.installer.k0s": 5,
    "bundler.installer.plan": 4,
    "bundler.installer.remote": 4,
    "bundler.installer.push": 4,
    "bundler.installer.dockerload": 4.5,
    "bundler.installer.ctrimport": 4.6,
    "bundler.installer.containerdconf": 4.6,
    "bundler.installer.preflight": 5,
    "bundler.installer.steps": 5,
    "bundler.installer.kubeadmup": 5,
    "bundler.installer.lbconfig": 3.6,
    "bundler.installer.lbsetup": 5,
    "bundler.installer.kubeconfig": 4,
    "bundler.installer.siteregistry": 6,
    "bundler.installer.apply": 6.5,
    "bundler.installer.options": 6.5,
    "bundler.installer.progress": 3,
    "bundler.installer.main": 7,
    "bundler.installer.run": 8,
}
OWNERS = {
    "yaml": {"bundler.manifest"},
    "requests": {"bundler.fetch"},
    "urllib3": {"bundler.fetch"},
    "cryptography": {"bundler.signing"},
    "click": {"bundler.cli"},
    "tqdm": {"bundler.cli"},
    "docker": {"bundler.images"},
    "debian": {"bundler.debs"},
    "cyclonedx": {"bundler.sbom"},
    "packageurl": {"bundler.sbom"},
    "solv": {"bundler.solvhelper"},
}
# progress is the installer CLI's own printer (only main makes one; it writes, never exits).
CLIS = {
    "bundler.cli",
    "bundler.solvhelper",  # a program of its own: the system python3 runs it for bundler.rpmsolve
    "bundler.__main__",
    "bundler.installer.main",
    "bundler.installer.run",
    "bundler.installer.progress",
}
SITE_FORBIDDEN = {"bundler.manifest", "bundler.cache", "bundler.fetch", "bundler.build", "bundler.cli"}


def modules() -> dict[str, ast.Module]:
    out = {}
    for path in sorted(PKG.rglob("*.py")):
        if "_vendor" in path.parts:  # third-party code carried as is
            continue
        rel = path.relative_to(PKG.parent).with_suffix("")
        name = ".".join(rel.parts).removesuffix(".__init__")
        out[name] = ast.parse(path.read_text(), str(path))
    return out


def imports(tree: ast.Module) -> set[str]:
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            if node.module == "bundler":  # from bundler import archive, signing
                found |= {f"bundler.{a.name}" for a in node.names if a.name != "__version__"}
    return found


MODULES = modules()


@pytest.mark.parametrize("name", sorted(MODULES))
def test_imports_point_down(name: str) -> None:
    assert name in RANK, f"{name}: give it a layer in RANK"
    rank = RANK[name]
    for imported in imports(MODULES[name]):
        if imported.startswith("bundler") and imported != name:
            assert RANK.get(imported, 99) < rank or imported == "bundler.errors" or imported == "bundler", (
                f"{name} imports {imported}, which is not below it"
            )
        top = imported.split(".")[0]
        if top in OWNERS:
            assert name in OWNERS[top], f"{name} imports {top}; only {OWNERS[top]} may"


@pytest.mark.parametrize("name", [n for n in sorted(MODULES) if n.startswith("bundler.installer")])
def test_installer_stays_site_safe(name: str) -> None:
    assert not imports(MODULES[name]) & (SITE_FORBIDDEN | set(OWNERS) - {"cryptography"})


@pytest.mark.parametrize("name", [n for n in sorted(MODULES) if n not in CLIS])
def test_nothing_below_the_clis_prints_or_exits(name: str) -> None:
    for node in ast.walk(MODULES[name]):
        if isinstance(node, ast.Call):
            func = ast.unparse(node.func)
            assert func not in ("print", "sys.exit", "exit", "click.echo", "os._exit"), f"{name} calls {func}"


def test_every_module_has_a_docstring() -> None:
    missing = [name for name, tree in MODULES.items() if not ast.get_docstring(tree)]
    assert missing == []


def carried_sources() -> list[Path]:
    from bundler.build import INSTALLER_FILES

    return [PKG / source for source in INSTALLER_FILES.values() if source.endswith(".py")]


def test_the_carried_installer_parses_as_python_36() -> None:
    """Everything install.sh runs on the site must parse on python3 3.6 (Rocky Linux 8's platform-python):
    no walrus, no positional-only parameters, and no ``from __future__ import annotations`` (3.7+), which
    ``ast`` accepts for any version but 3.6 refuses to compile."""
    for path in carried_sources():
        tree = ast.parse(path.read_text(), str(path), feature_version=(3, 6))
        if "_vendor" in path.parts:
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module == "__future__":
                assert "annotations" not in {a.name for a in node.names}, (
                    f"{path}: 3.6 has no annotations future"
                )


# Modules that decide on data alone: no file, process, network or clock access (DESIGN.md).
PURE = {
    "bundler.trust",
    "bundler.lock",
    "bundler.oci",
    "bundler.rkeimages",
    "bundler.kinds",
    "bundler.installer.plan",
    "bundler.k0simages",
    "bundler.installer.topology",
}
IO_MODULES = {"os", "io", "subprocess", "socket", "shutil", "tempfile", "fcntl", "http", "urllib", "time"}


@pytest.mark.parametrize("name", sorted(PURE))
def test_pure_modules_do_no_io(name: str) -> None:
    """The trust decision and the install plan are data in, data out: the clock, too, comes in as data."""
    tree = MODULES[name]
    assert not {i.split(".")[0] for i in imports(tree)} & IO_MODULES, f"{name} imports an I/O module"
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            assert ast.unparse(node.func) not in ("open", "input", "exec", "eval"), f"{name} calls it"
