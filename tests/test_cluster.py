"""A run on a Ray cluster of two nodes (a head and a second raylet on loopback, started by
``ray.cluster_utils.Cluster`` as ``ray start --head`` / ``ray start --address`` would): its
clients run on both nodes, and it is bit-identical to the same run on one node (docs/cluster.md)."""

from __future__ import annotations

import pytest

from experiments.cli.simulate import simulate as simulate_on
from fp8fl.run.results import read_rounds
from tests.simulation import simulate, tiny_config

pytestmark = pytest.mark.integration


def test_a_run_on_a_two_node_ray_cluster_equals_the_one_node_run(tmp_path):
    from ray.cluster_utils import Cluster

    values = {"clients_per_round": 4, "tracking": "none"}
    _, alone = simulate(tiny_config(tmp_path / "one-node", **values))
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    try:
        cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        nodes = cluster.list_all_nodes()
        ids = {node.node_id for node in nodes}
        assert len(ids) == 2
        config = tiny_config(tmp_path / "cluster", **values)
        simulate_on(config, ray_address=cluster.address)
    finally:
        cluster.shutdown()
    assert all(not node.live_processes() for node in nodes), "a Ray process outlived the test"
    (run_dir,) = [p for p in (tmp_path / "cluster").iterdir() if p.is_dir()]
    spread = read_rounds(run_dir)
    ran_on = {node for r in spread[1:] for node in r["nodes"].values()}
    assert ran_on == ids, "the clients did not run on both nodes"
    assert len({n for r in alone[1:] for n in r["nodes"].values()}) == 1
    same = ("round", "model_sha256", "accuracy", "loss", "bytes_up", "bytes_down", "clients_ok")
    assert [{k: r[k] for k in same} for r in spread] == [{k: r[k] for k in same} for r in alone]
