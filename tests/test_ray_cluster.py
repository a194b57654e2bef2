"""The Ray engine against the clusters and faults it meets, without starting Ray: replicas sized from
the nodes ``ray.nodes()`` lists, an unreadable input failing its own row, and why a join failed.

A real multi-node cluster costs tens of seconds per node to start, so the node lists here are the
ones such clusters report (the README's "Many images / a cluster" has the check by hand).
"""

from __future__ import annotations

import io
import os
import socket

import pandas as pd
import pytest
from PIL import Image

pytest.importorskip("ray")

from osediff.batch import ray_cluster
from osediff.batch.ray_cluster import RayEngineError, replica_resources
from osediff.batch.ray_engine import _decode
from osediff.cli import main
from osediff.pipeline import OSEDiffPipeline


class FakeCluster:
    """What the engine asks a joined cluster: its nodes as ``ray.nodes()`` lists them."""

    def __init__(self, *nodes: dict[str, float], dead: tuple[dict[str, float], ...] = ()) -> None:
        self.alive, self.dead = list(nodes), list(dead)

    def nodes(self) -> list[dict]:
        listed = [(True, node) for node in self.alive] + [(False, node) for node in self.dead]
        return [{"NodeID": f"{i:056x}", "Alive": alive, "Resources": {**resources, "memory": 2e9}}
                for i, (alive, resources) in enumerate(listed)]

    def cluster_resources(self) -> dict[str, float]:  # what sizing by the cluster's total would read
        total: dict[str, float] = {}
        for node in self.alive:
            for key, value in node.items():
                total[key] = total.get(key, 0) + value
        return total


def placeable(nodes: list[dict[str, float]], resources: dict) -> bool:
    """Whether Ray can run every replica at once, each on one node, and a decoding task beside them."""
    free = [{"CPU": n.get("CPU", 0), "GPU": n.get("GPU", 0)} for n in nodes]
    cpu, gpu = resources["num_cpus"], resources.get("num_gpus", 0)
    for _ in range(resources["compute"].max_size):
        fits = [f for f in free if f["CPU"] >= cpu and f["GPU"] >= gpu]
        if not fits:
            return False
        host = max(fits, key=lambda f: f["CPU"])
        host["CPU"] -= cpu
        host["GPU"] -= gpu
    return any(f["CPU"] >= min(1, cpu) for f in free)


@pytest.mark.parametrize(("nodes", "cpus_per_replica", "replicas", "each"), [
    ([{"CPU": 1}] * 3, 8, 2, {"num_cpus": 1}),  # the cluster that waited for ever: {'CPU': 2.0} pending
    ([{"CPU": 4}] * 3, 8, 2, {"num_cpus": 4}),  # 8 of 12 CPUs, but no node has 8
    ([{"CPU": 0}, {"CPU": 2}, {"CPU": 2}], 2, 1, {"num_cpus": 2}),  # a head that runs nothing
    ([{"CPU": 2}], 8, 1, {"num_cpus": 1}),
    ([{"CPU": 1}], 8, 1, {"num_cpus": 0.5}),  # one CPU: replica and decoding share it
    ([{"CPU": 16}], 8, 1, {"num_cpus": 8}),
    ([{"CPU": 17}], 4, 4, {"num_cpus": 4}),
    ([{"CPU": 4, "GPU": 2}, {"CPU": 4, "GPU": 1}], 8, 3, {"num_cpus": 1, "num_gpus": 1}),
    ([{"CPU": 1, "GPU": 1}], 8, 1, {"num_cpus": 0.5, "num_gpus": 1}),
])
def test_replicas_are_sized_from_the_nodes_not_the_clusters_total(nodes, cpus_per_replica, replicas, each):
    cluster = FakeCluster(*nodes, dead=({"CPU": 64},))  # a node that died is no place for a replica
    resources = replica_resources(cluster, cpus_per_replica, None, images=100, chunk=1)
    assert placeable(nodes, resources), resources
    assert resources["compute"].max_size == replicas
    assert {key: value for key, value in resources.items() if key != "compute"} == each


def test_the_pool_is_no_larger_than_the_work_or_the_asked_count():
    cluster = FakeCluster(*[{"CPU": 4}] * 5)
    assert replica_resources(cluster, 2, None, images=3, chunk=2)["compute"].max_size == 2
    assert replica_resources(cluster, 2, 3, 100, 1)["compute"].max_size == 3


@pytest.mark.parametrize(("nodes", "message"), [
    ([{"CPU": 0}], "no node of the Ray cluster has a CPU for a model replica (1 node(s): 0 CPU); add a node"),
    ([], "no node of the Ray cluster has a CPU for a model replica (no live node)"),
    ([{"CPU": 0, "GPU": 2}], "no node of the Ray cluster has a GPU and a CPU for a model replica "
                             "(1 node(s): 0 CPU + 2 GPU)"),
])
def test_a_cluster_where_no_node_can_host_a_replica_fails_at_once_in_one_line(nodes, message):
    with pytest.raises(RayEngineError) as info:
        replica_resources(FakeCluster(*nodes), 8, None, images=4, chunk=1)
    assert str(info.value).startswith(message) and "\n" not in str(info.value)


def test_an_input_that_cannot_be_read_fails_its_own_row_and_the_rest_decode(tmp_path):
    """A storage error (here a store that cannot be opened, on a node as when its credentials or its
    endpoint are missing there) once escaped the decoding task and ended the whole job."""
    good = tmp_path / "good.png"
    Image.new("RGB", (6, 4), (10, 20, 30)).save(good)
    buffer = io.BytesIO()
    Image.new("RGB", (5, 3)).save(buffer, format="PNG")
    (tmp_path / "uri.png").write_bytes(buffer.getvalue())
    inputs = ["nosuch://bucket/lr/a.png", str(good), f"file://{tmp_path}/missing.png", f"file://{tmp_path}/uri.png",
              str(tmp_path / "gone.png")]
    rows = _decode(pd.DataFrame({"input": inputs}), max_pixels=None)
    assert list(rows["input"]) == inputs
    assert [(w, h) for w, h in zip(rows["width"], rows["height"], strict=True)] == [(0, 0), (6, 4), (0, 0), (5, 3),
                                                                                     (0, 0)]
    errors = list(rows["error"])
    assert errors[0].startswith("nosuch://bucket/lr/a.png: cannot open (")
    assert errors[2].startswith(f"file://{tmp_path}/missing.png: cannot read (") and "\n" not in errors[2]
    assert errors[1] == errors[3] == "" and errors[4].startswith(str(tmp_path / "gone.png"))


@pytest.fixture
def listening_port():
    """A port that accepts TCP (the engine probes it before Ray joins)."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        yield server.getsockname()[1]


def test_a_refused_token_is_the_reason_given_when_joining_fails(listening_port, tmp_path, capsys, monkeypatch):
    """Joining a cluster with token authentication, without its token: Ray's client logs the
    reason once a second (on stderr, held back) and then raises an error naming only the address
    it resolved. The reason is what the one line says, with the address that was given."""
    import ray

    def refused(**kwargs):
        for _ in range(3):
            os.write(2, b"[2026-12-04 17:13:26,297 W 9063 9063] gcs_client.cc:210: Failed to get cluster ID from "
                        b"GCS server: Unauthenticated: RPC error: InvalidAuthToken: Authentication token is "
                        b"missing or incorrect\n")
        raise ConnectionError("Failed to connect to Ray cluster at 192.0.2.2:6390")

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", refused)
    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)  # a driver that does not send the token it has
    monkeypatch.setattr(OSEDiffPipeline, "from_pretrained", pytest.fail)
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    address = f"127.0.0.1:{listening_port}"
    assert main(["upscale", str(tmp_path / "a.png"), "-o", str(tmp_path / "out"), "--engine", "ray",
                 "--ray-address", address, "--prompt-extractor", "text"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: --ray-address {address}: cannot join the Ray cluster there (Failed to get "
                          "cluster ID from GCS server: Unauthenticated: RPC error: InvalidAuthToken: "
                          "Authentication token is missing or incorrect); the cluster uses token authentication: "
                          "run with RAY_AUTH_MODE=token and the cluster's token (RAY_AUTH_TOKEN"), err
    assert "192.0.2.2" not in err and len(err.splitlines()) == 1
    monkeypatch.setenv("RAY_AUTH_MODE", "token")  # a token sent, but not the cluster's
    with pytest.raises(RayEngineError, match=r"InvalidAuthToken.*; the cluster refused this driver's token: give it "):
        ray_cluster.connect(address)


def test_other_join_failures_keep_rays_words_and_what_it_logged(listening_port, tmp_path, capsys, monkeypatch):
    import ray

    def not_a_head(**kwargs):
        os.write(2, b"[2026-12-04 17:13:26,297 W 1 1] gcs_client.cc:210: Failed to get cluster ID from GCS "
                    b"server: UNAVAILABLE: failed to connect to all addresses\n")
        raise ConnectionError("Failed to connect to Ray cluster at 192.0.2.2:6390")

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", not_a_head)
    with pytest.raises(RayEngineError) as info:
        ray_cluster.connect(f"127.0.0.1:{listening_port}")
    assert str(info.value) == (
        f"address 127.0.0.1:{listening_port}: cannot join the Ray cluster there (Failed to connect to Ray cluster "
        "at 192.0.2.2:6390: Failed to get cluster ID from GCS server: UNAVAILABLE: failed to connect to all "
        "addresses); start a cluster with `ray start --head` or leave address out")


def test_a_job_without_results_says_what_it_waits_for(capsys):
    import threading

    from ray.data import ActorPoolStrategy

    waiting = threading.Event()
    resources = {"compute": ActorPoolStrategy(size=2), "num_cpus": 4}
    ray_cluster.notice_if_waiting(waiting, 0.05, resources, FakeCluster({"CPU": 4}, {"CPU": 2, "GPU": 1}))
    threading.Event().wait(1.0)
    err = capsys.readouterr().err
    assert err == ("note: no result after 0 s; 2 model replica(s) ask for {'CPU': 4} each, on nodes with 2 node(s): "
                   "4 CPU, 2 CPU + 1 GPU: they are loading their models, or waiting for those resources (`ray status` "
                   "lists pending demands)\n")
    answered = threading.Event()
    answered.set()  # a result came in time: nothing is said
    ray_cluster.notice_if_waiting(answered, 0.05, resources, FakeCluster({"CPU": 4}))
    threading.Event().wait(0.3)
    assert capsys.readouterr().err == ""
