"""The topology rules (issue 16, point 5): KUMA's quorum table exactly, role separation per product,
min_workers, kubeadm's VIP, even counts; each finding with the inventory's FILE:LINE."""

from __future__ import annotations

import pytest

from bundler.installer.topology import (
    Finding,
    Member,
    Rules,
    check,
    count_problems,
    problems,
    quorum,
    quorum_summary,
    quorum_table,
    roles_of,
    warnings,
)

# KUMA's fault-tolerance page: controllers at install → quorum → controllers that may fail.
KUMA_TABLE = [
    (1, 1, 0),
    (2, 2, 0),
    (3, 2, 1),
    (4, 3, 1),
    (5, 3, 2),
    (6, 4, 2),
    (7, 4, 3),
    (8, 5, 3),
    (9, 5, 4),
]


@pytest.mark.parametrize("nodes, need, tolerated", KUMA_TABLE)
def test_quorum_rows_1_to_9_as_kumas_guide_prints_them(nodes: int, need: int, tolerated: int) -> None:
    assert quorum(nodes) == (need, tolerated)


def test_quorum_table_is_the_guides_table_and_goes_on_for_any_count() -> None:
    assert quorum_table(9) == KUMA_TABLE
    assert quorum(101) == (51, 50) and quorum(0) == (1, 0)
    line = quorum_summary("k0s", 3)
    assert "3 controller node(s): quorum 2, tolerates 1 failure(s)" in line
    assert "1→1/0, 2→2/0, 3→2/1, 4→3/1, 5→3/2" in line


def _k0s(*spec: tuple[str, str, int]) -> list[Member]:
    return [Member(name, roles_of("k0s", (role,)), line) for name, role, line in spec]


KUMA = _k0s(
    ("c1", "controller", 5), ("c2", "controller", 9), ("c3", "controller", 13),
    ("w1", "worker", 17), ("w2", "worker", 21),
)  # fmt: skip


def test_kumas_topology_passes_and_min_workers_is_a_problem_with_a_line() -> None:
    assert check(KUMA, Rules("k0s", min_workers=2, forbid_shared=True)) == []
    found = check(KUMA, Rules("k0s", min_workers=3, forbid_shared=True))
    assert problems(found, "k0sctl.yaml") == [
        "k0sctl.yaml:17: 2 worker(s), fewer than the bundle's min_workers (3)"
    ]


def test_combined_roles_refused_for_a_product_that_forbids_them_unless_demo() -> None:
    demo = _k0s(("one", "controller+worker", 4), ("w1", "worker", 8))
    refused = problems(check(demo, Rules("k0s", forbid_shared=True)), "k0sctl.yaml")
    assert any(
        p.startswith(
            "k0sctl.yaml:4: controller and worker roles share one: this product allows that only for a demo"
        )
        and "--demo" in p
        for p in refused
    )
    allowed = check(demo, Rules("k0s", forbid_shared=True, demo=True))
    assert not any("share" in p for p in problems(allowed))
    assert any("a demonstration install (--demo)" in w for w in warnings(allowed))
    # A product that allows shared roles: a warning only, as for rke's controlplane+worker.
    assert not any("share" in p for p in problems(check(demo, Rules("k0s"))))
    assert any("fine for a demo" in w for w in warnings(check(demo, Rules("k0s"))))
    # k0sctl's "single" is a controller that runs workloads too.
    assert roles_of("k0s", ("single",)) == ("controller", "worker")


def test_even_and_small_counts_named_with_the_tables_figures() -> None:
    four = _k0s(
        *[(f"c{i}", "controller", i + 1) for i in range(4)], ("w1", "worker", 9), ("w2", "worker", 10)
    )
    assert problems(check(four, Rules("k0s"))) == [
        "4 controller nodes (even): quorum 3, tolerates 1 failure(s), no better than 3 (quorum 2, tolerates 1); "
        "use an odd number"
    ]
    assert count_problems(2, "controller") == [
        "2 controller node(s): quorum 2, tolerates 0 failure(s); a fault-tolerant cluster needs at least 3"
    ]
    assert count_problems(3) == count_problems(5) == count_problems(0) == []


def test_missing_roles_per_kind() -> None:
    assert problems(check(_k0s(("w1", "worker", 3)), Rules("k0s"))) == ["no node has the controller role"]
    assert problems(check(_k0s(("c1", "controller", 3)), Rules("k0s")))[0] == "no node has the worker role"
    rke = [Member("cp", ("controlplane",), 2), Member("w", ("worker",), 3)]
    assert problems(check(rke, Rules("rke")))[0] == "no node has the etcd role"
    # A bundle that brings no cluster up: only the worker matters.
    assert problems(check(rke, Rules(""))) == []


def test_kubeadm_needs_a_vip_for_more_than_one_control_plane() -> None:
    planes = [Member(f"m{i}", ("controlplane", "etcd"), 3 + i) for i in range(3)]
    nodes = [*planes, Member("w1", ("worker",), 9)]
    found = problems(check(nodes, Rules("kubeadm")), "cluster.yml")
    assert found == [
        "cluster.yml:3: 3 control-plane nodes and no vip: kubeadm joins them behind one control-plane endpoint; "
        "add vip: ADDRESS (a free address on their network) to the inventory"
    ]
    assert problems(check(nodes, Rules("kubeadm", vip="10.0.0.100"))) == []
    assert problems(check([planes[0], nodes[-1]], Rules("kubeadm")))[0].startswith("1 controlplane node(s)")
    assert not any("vip" in p for p in problems(check([planes[0], nodes[-1]], Rules("kubeadm"))))


def test_finding_text_without_file_or_line() -> None:
    assert Finding("problem", "x").text() == "x"
    assert Finding("problem", "x", 3).text("f.yml") == "f.yml:3: x"
    assert Finding("problem", "x").text("f.yml") == "f.yml: x"
