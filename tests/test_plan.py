"""The install plan as pure data (``plan.make_plan``): for a given journal and node facts, which
actions are left on which node in which phase. No node, no file: data in, data out."""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from pathlib import Path

from bundler import oci
from bundler.installer.inventory import Node
from bundler.installer.plan import (
    LOCAL,
    PHASES,
    NodeFacts,
    PhasePlan,
    Plan,
    Route,
    describe,
    journal_done,
    make_plan,
    render,
)
from bundler.installer.preflight import SWAP_ON, swap_problem, swap_verdict
from bundler.lock import Binary, Deb, Lock, Step

CP = Node("10.0.0.1", "root", ("controlplane", "etcd"), hostname_override="cp-1")
W1 = Node("10.0.0.2", "root", ("worker",), hostname_override="worker-1")
W2 = Node("10.0.0.3", "root", ("worker",), hostname_override="worker-2")
NODES = [CP, W1, W2]
SHA = "a" * 64


def _image(tag: str) -> oci.Image:
    digest = "sha256:" + hashlib.sha256(tag.encode()).hexdigest()
    return oci.Image(
        f"docker.io/{tag}", (tag,), "daemon", digest, oci.OCI_MANIFEST, digest, "linux/amd64", ()
    )


APP_A, APP_B = _image("test/app-a:1"), _image("test/app-b:1")
RKE = Binary("rke", "bin/rke", "/usr/local/bin/rke", "0755", "https://example.invalid/rke", "b" * 64, 10)


def _lock(version: str = "1.0") -> Lock:
    return Lock(
        "app", version, {"os": "debian", "codename": "bookworm", "arch": "amd64"}, "test", "0" * 64, 0, (),
        binaries=(RKE,),
        steps=(Step("prepare", "scripts/prepare.sh", "c" * 64), Step("deploy", "scripts/deploy.sh", "d" * 64)),
        images=(APP_A, APP_B),
        debs=(Deb("docker-ce", "5:24.0.7", "amd64", "debs/d.deb", "e" * 64, 1, "u", "requested"),
              Deb("libfoo", "1.0", "amd64", "debs/l.deb", "f" * 64, 1, "u", "docker-ce")),
    )  # fmt: skip


def _facts(**images: set[oci.Image]) -> dict[str, NodeFacts]:
    """Every node passes the preflight; worker nodes hold ``images[name]`` (tagged), none has rke."""
    out = {}
    for node in NODES:
        held = images.get(node.name.replace("-", "_"), set())
        out[node.name] = NodeFacts(
            summary="x86_64 bookworm",
            checked=True,
            images=frozenset(i.config for i in held),
            tags={t: i.config for i in held for t in i.tags},
            binaries={RKE.dest: ""},
        )
    return out


def _phase(plan: Plan, name: str) -> PhasePlan:
    return next(p for p in plan.phases if p.name == name)


def _keys(plan: Plan) -> set[str]:
    return {a.key for a in plan.actions}


def _journal(keys: set[str], lock_sha256: str = SHA, complete: bool = True) -> dict:
    return {
        "format": 1,
        "installed": {"app": {"version": "1.0", "lock_sha256": lock_sha256, "complete": complete}},
        "done": {k: True for k in keys},
    }


def test_a_fresh_site_gets_every_action_in_phase_order() -> None:
    plan = make_plan(_lock(), NODES, Route(), frozenset(), _facts())
    assert [p.name for p in plan.phases] == list(PHASES) and plan.refusal() is None
    by_phase = {p.name: sorted(a.key for a in p.actions) for p in plan.phases}
    assert by_phase == {
        "preflight": [],  # checks, not actions: what the nodes said
        "packages": [f"packages/{n.name}/docker-ce=5:24.0.7" for n in NODES],  # requested only
        "binaries": [f"binaries/{n.name}//usr/local/bin/rke" for n in NODES],
        "prepare": [],  # no before-cluster step
        "images": sorted(f"images/{w.name}/{i.config}" for w in (W1, W2) for i in (APP_A, APP_B)),
        "cluster": [f"cluster/{LOCAL}/rke-up"],
        "steps": [f"steps/{LOCAL}/deploy", f"steps/{LOCAL}/prepare"],
    }
    assert [a.item for a in plan.phases[-1].actions] == ["prepare", "deploy"]  # in the lock's order
    assert [a.what for a in _phase(plan, "images").of("worker-1")] == ["test/app-a:1", "test/app-b:1"]
    assert "images     worker-1             load test/app-a:1, test/app-b:1" in render(plan)
    assert not _phase(plan, "images").of("cp-1")  # the control plane gets no workload


def test_nothing_to_do_after_a_finished_install() -> None:
    first = make_plan(_lock(), NODES, Route(), frozenset(), _facts())
    state = _journal(_keys(first))
    done = journal_done(state, "app", SHA)
    on_nodes = _facts(worker_1={APP_A, APP_B}, worker_2={APP_A, APP_B})
    for node in NODES:  # rke is where the install put it
        on_nodes[node.name] = NodeFacts(**{**vars(on_nodes[node.name]), "binaries": {RKE.dest: RKE.sha256}})
    again = make_plan(_lock(), NODES, Route(), done, on_nodes)
    assert again.actions == () and again.refusal() is None
    offline = make_plan(_lock(), NODES, Route(), done, None)  # the journal alone says the same
    assert offline.actions == () and offline.offline
    assert "steps      step prepare: done before, skipped" in render(again)


def test_after_a_partial_install_only_the_missing_nodes_images_are_left() -> None:
    """worker-2 was down when the images went out: worker-1 has them, the journal has the rest
    up to the images phase. Only worker-2's images, then rke up and the steps, are left."""
    first = make_plan(_lock(), NODES, Route(), frozenset(), _facts())
    before_images = {k for k in _keys(first) if k.split("/")[0] in ("packages", "binaries")}
    before_images |= {f"images/worker-1/{i.config}" for i in (APP_A, APP_B)}
    done = journal_done(_journal(before_images, complete=False), "app", SHA)
    on_nodes = _facts(worker_1={APP_A, APP_B})
    for node in NODES:
        on_nodes[node.name] = NodeFacts(**{**vars(on_nodes[node.name]), "binaries": {RKE.dest: RKE.sha256}})
    plan = make_plan(_lock(), NODES, Route(), done, on_nodes)
    assert _keys(plan) == {
        *(f"images/worker-2/{i.config}" for i in (APP_A, APP_B)),
        f"cluster/{LOCAL}/rke-up",
        f"steps/{LOCAL}/prepare",
        f"steps/{LOCAL}/deploy",
    }
    images = next(p for p in plan.phases if p.name == "images")
    assert images.present["worker-1"] == (APP_A.config, APP_B.config)
    # A node that could not tell (facts without images): the journal decides for it.
    unknown = {**on_nodes, "worker-1": NodeFacts(summary="x", checked=True)}
    assert _keys(make_plan(_lock(), NODES, Route(), done, unknown)) == _keys(plan)


def test_a_changed_bundle_version_starts_afresh_but_keeps_what_nodes_have() -> None:
    finished = _journal(_keys(make_plan(_lock(), NODES, Route(), frozenset(), _facts())))
    assert journal_done(finished, "app", "9" * 64) == frozenset()  # the journal was another bundle's
    v2 = _lock("2.0")
    on_nodes = _facts(worker_1={APP_A, APP_B}, worker_2={APP_A})
    plan = make_plan(v2, NODES, Route(), journal_done(finished, "app", "9" * 64), on_nodes)
    assert {k for k in _keys(plan) if k.startswith("images/")} == {f"images/worker-2/{APP_B.config}"}
    assert {f"cluster/{LOCAL}/rke-up", f"steps/{LOCAL}/prepare", "binaries/cp-1//usr/local/bin/rke"} <= _keys(
        plan
    )
    assert "packages/worker-1/docker-ce=5:24.0.7" in _keys(plan)


def test_an_image_present_under_another_name_is_only_tagged() -> None:
    facts = _facts(worker_1={APP_A})
    facts["worker-1"] = NodeFacts(**{**vars(facts["worker-1"]), "tags": {}})  # the ID, without its tag
    images = next(
        p for p in make_plan(_lock(), NODES, Route(), frozenset(), facts).phases if p.name == "images"
    )
    assert [(a.kind, a.what) for a in images.of("worker-1")] == [("tag", "test/app-a:1"),
                                                                  ("load", "test/app-b:1")]  # fmt: skip
    registry = make_plan(_lock(), NODES, Route("registry", "10.0.0.9:5000"), frozenset(), facts)
    assert [a.kind for a in _phase(registry, "images").of("worker-2")] == ["pull", "pull"]


def test_preflight_failures_and_a_cluster_rke_cannot_build_refuse_the_plan() -> None:
    facts = _facts()
    facts["worker-2"] = NodeFacts(("worker-2: unreachable over SSH (Connection refused)",), checked=True)
    plan = make_plan(_lock(), NODES, Route(), frozenset(), facts)
    message = plan.refusal()
    assert message is not None and message.startswith("preflight: failed on worker-2; fix that")
    assert "worker-2             FAILED: worker-2: unreachable over SSH" in "\n".join(render(plan))
    no_etcd = [W1, W2]
    refused = make_plan(_lock(), no_etcd, Route(), frozenset(), _facts()).refusal()
    assert refused is not None and "no node has the etcd role: rke cannot build a cluster" in refused
    offline = make_plan(_lock(), no_etcd, Route(), frozenset(), None)  # no preflight ran: nothing refused
    assert offline.refusal() is None and offline.phases[0].notes == (
        "not run: --offline, no node was contacted",
    )


def test_only_one_phase() -> None:
    plan = make_plan(_lock(), NODES, Route(), frozenset(), _facts(), phases=("images",))
    assert [p.name for p in plan.phases] == ["images"] and len(plan.actions) == 4
    assert plan.as_dict()["phases"][0]["actions"][0]["key"] == f"images/worker-1/{APP_A.config}"


def test_packages_by_role_go_to_the_nodes_of_the_role() -> None:
    """debs.roles: heartbeat (requested for workers) is in the workers' actions only; its
    dependency comes with it (apt), and docker-ce goes everywhere."""
    debs = (
        *_lock().debs,
        Deb("heartbeat", "1:3.0.6", "amd64", "debs/h.deb", "1" * 64, 1, "u", "requested"),
        Deb("libpils2", "1.0", "amd64", "debs/p.deb", "2" * 64, 1, "u", "heartbeat"),
    )
    lock = replace(_lock(), debs=debs, deb_roles={"worker": ("heartbeat",)})
    plan = make_plan(lock, NODES, Route(), frozenset(), _facts())
    packages = _phase(plan, "packages")
    assert [a.item for a in packages.of("cp-1")] == ["docker-ce=5:24.0.7"]
    for worker in ("worker-1", "worker-2"):
        assert [a.item for a in packages.of(worker)] == ["docker-ce=5:24.0.7", "heartbeat=1:3.0.6"]
    assert lock.deb_places() == {
        "docker-ce": (),
        "libfoo": (),
        "heartbeat": ("worker",),
        "libpils2": ("worker",),
    }
    assert any(
        ln.endswith("worker-1             install docker-ce=5:24.0.7, heartbeat=1:3.0.6")
        for ln in render(plan)
    )
    assert any("heartbeat only on worker nodes: worker-1, worker-2" in ln for ln in describe(lock, NODES))
    no_roles = json.loads(_lock().to_bytes())
    assert "deb_roles" not in no_roles  # a bundle without debs.roles keeps its lock's bytes
    assert json.loads(lock.to_bytes())["deb_roles"] == {"worker": ["heartbeat"]}


def test_before_cluster_steps_run_after_packages_and_before_images_and_the_cluster() -> None:
    """``when: before-cluster`` steps form the prepare phase (after packages and binaries, before
    images and rke up); a finished one is skipped by the journal, the others run after the cluster."""
    steps = (
        Step(
            "swap-off", "scripts/01-swap-off.sh", "1" * 64, on="all", when="before-cluster", fixes=("swap",)
        ),
        Step("heartbeat", "scripts/02-heartbeat.sh", "2" * 64, on="worker", when="before-cluster"),
        Step("deploy", "scripts/03-deploy.sh", "d" * 64),
    )
    lock = replace(_lock(), steps=steps)
    plan = make_plan(lock, NODES, Route(), frozenset(), _facts())
    names = [p.name for p in plan.phases]
    assert names.index("packages") < names.index("binaries") < names.index("prepare") < names.index("images")
    assert names.index("prepare") < names.index("cluster") < names.index("steps")
    prepare = _phase(plan, "prepare")
    assert [a.key for a in prepare.of("cp-1")] == ["prepare/cp-1/swap-off"]
    assert [a.item for a in prepare.of("worker-1")] == ["swap-off", "heartbeat"]
    assert [a.key for a in _phase(plan, "steps").actions] == [f"steps/{LOCAL}/deploy"]
    # The order of the actions is the order the real run keeps in its journal.
    order = [a.key for a in plan.actions]
    assert order.index("prepare/worker-2/heartbeat") < order.index(f"images/worker-1/{APP_A.config}")
    assert order.index("prepare/cp-1/swap-off") < order.index(f"cluster/{LOCAL}/rke-up")

    done = journal_done(_journal({"prepare/cp-1/swap-off", "prepare/worker-1/swap-off"}), "app", SHA)
    again = make_plan(lock, NODES, Route(), done, _facts())
    assert [a.key for a in _phase(again, "prepare").actions] == [
        "prepare/worker-2/swap-off",
        "prepare/worker-1/heartbeat",
        "prepare/worker-2/heartbeat",
    ]
    written = json.loads(lock.to_bytes())["steps"]
    assert written[0]["when"] == "before-cluster" and written[0]["fixes"] == ["swap"]
    assert "when" not in written[2] and "fixes" not in written[2]  # an after-cluster step reads as before
    assert "prepare    before the cluster, in order: swap-off (on all), heartbeat (on worker)" in describe(
        lock, NODES
    )


def test_swap_on_is_a_warning_only_where_a_before_cluster_step_turns_it_off() -> None:
    swap_off = Step("swap-off", "scripts/01-swap-off.sh", "1" * 64, on="worker", when="before-cluster",
                    fixes=("swap",))  # fmt: skip
    lock = replace(_lock(), steps=(swap_off,))
    assert swap_verdict("0", lock, W1) == (None, None)
    problem, warning = swap_verdict("1", lock, W1)
    assert problem is None and warning and "step swap-off turns it off before the cluster" in warning
    assert swap_verdict("1", lock, CP) == (SWAP_ON, None)  # the step does not run on cp-1
    assert swap_verdict("1", _lock(), W1) == (SWAP_ON, None)  # no such step: refused as before
    assert swap_problem({"swap": ["1"]}) and swap_problem({"swap": ["0"]}) is None


def test_topology_problems_are_what_stops_an_install_until_confirmed() -> None:
    """Roles nobody has, too few workers, an etcd count too small or even (when the bundle brings
    the cluster up) are problems; shared roles stay a warning, and no warning repeats a problem."""
    from dataclasses import replace

    from bundler.installer.main import _warnings_left
    from bundler.installer.plan import topology_problems

    lock = _lock()
    etcd = [
        Node(f"10.0.1.{i}", "root", ("controlplane", "etcd"), hostname_override=f"cp-{i}") for i in range(4)
    ]
    assert topology_problems(lock, [*etcd[:3], W1, W2]) == []
    assert topology_problems(lock, NODES) == [
        "1 etcd node(s): quorum 1, tolerates 0 failure(s); a fault-tolerant cluster needs at least 3"
    ]
    even = topology_problems(lock, [*etcd, W1])
    assert len(even) == 1 and "4 etcd nodes (even)" in even[0] and "use an odd number" in even[0]
    assert _warnings_left([*etcd, W1], lock, even) == []  # said once, as the problem
    assert topology_problems(replace(lock, min_workers=3), [*etcd[:3], W1, W2]) == [
        "2 worker(s), fewer than the bundle's min_workers (3)"
    ]
    assert topology_problems(lock, etcd[:3]) == ["no node has the worker role"]
    plain = replace(lock, binaries=())  # no cluster of its own: etcd is none of its business
    assert topology_problems(plain, NODES) == [] and topology_problems(plain, [CP]) == [
        "no node has the worker role"
    ]
    shared = Node("10.0.0.9", "root", ("controlplane", "etcd", "worker"), hostname_override="all-in-one")
    assert any("share all-in-one" in w for w in _warnings_left([*etcd[:2], shared], lock, []))


def test_topology_problems_name_the_inventory_line(tmp_path: Path) -> None:
    """Each topology problem says where in the inventory it is: an etcd count at the first etcd
    node's line (naming the others'), too few workers at the first worker's, no worker at the
    ``nodes:`` key."""
    from dataclasses import replace

    from bundler.installer.inventory import load_inventory, nodes_line
    from bundler.installer.plan import located_topology_problems

    inventory = tmp_path / "cluster.yml"
    inventory.write_text(
        "ssh_key_path: ~/.ssh/id_ed25519\n"
        "nodes:\n"
        "  - address: 10.0.1.1\n    user: root\n    role: [controlplane, etcd]\n"
        "  - address: 10.0.1.2\n    user: root\n    role: [controlplane, etcd]\n"
        "  - address: 10.0.1.3\n    user: root\n    role: [worker]\n"
    )
    nodes = load_inventory(inventory)
    assert [n.line for n in nodes] == [3, 6, 9] and nodes_line(inventory) == 2
    problems = located_topology_problems(replace(_lock(), min_workers=2), nodes, str(inventory), 2)
    assert problems == [
        f"{inventory}:9: 1 worker(s), fewer than the bundle's min_workers (2)",  # at the (first) worker
        f"{inventory}:3: 2 etcd node(s): quorum 2, tolerates 0 failure(s); a fault-tolerant cluster needs "
        "at least 3 (etcd nodes on lines 3, 6)",
    ]
    no_worker = located_topology_problems(_lock(), nodes[:2], str(inventory), 2)
    assert no_worker[0] == f"{inventory}:2: no node has the worker role"
    assert located_topology_problems(_lock(), [], "x.yml", 0)[0].startswith("x.yml: no node has")


def test_describe_says_which_packages_the_bundle_carries() -> None:
    """The dry run's packages line names what the bundle carries: debs, rpms, or none at all."""
    from bundler.lock import Rpm

    def line(lock: Lock) -> str:
        return next(ln for ln in describe(lock, NODES) if ln.startswith("packages"))

    debs = _lock()
    assert line(debs).endswith("2 deb packages with apt from the bundled repository only")
    rpm = Rpm("docker-ce", "24.0.7-1.el8", "x86_64", "rpms/d.rpm", "e" * 64, 1, "u", "requested")
    rpms = replace(debs, debs=(), rpms=(rpm,), platform={"os": "rocky", "codename": "8", "arch": "amd64"})
    assert line(rpms).endswith("1 rpm packages with dnf (or yum) from the bundled repository only")
    k0s = replace(debs, debs=(), cluster={"kind": "k0s"})
    assert line(k0s).endswith("none (the bundle carries no packages)")
    assert "Debian" not in " ".join(line(x) for x in (debs, rpms, k0s))
