"""The Ray Serve application's options: a light ingress bound to the model deployment, replicas or
autoscaling, queues that are always bounded, and the proxy's HTTP options."""

from __future__ import annotations

from pathlib import Path

import pytest

from osediff.model_files import ModelFiles, ModelOptions
from osediff.serve.app import Scaling, build_app, http_options, local_node_cpus, parse_autoscale
from osediff.serve.edge import EdgeError, EdgeSettings
from osediff.serve.engine import ServeConfig

pytest.importorskip("ray.serve")


def deployments(scaling: Scaling, batch: int = 4):
    """(ingress, model): the deployments serve.run would deploy."""
    config = ServeConfig(ModelOptions(), ModelFiles(Path("base"), Path("w.pkl")), max_batch_size=batch)
    ingress = build_app(config, scaling)._bound_deployment
    model = next(arg for arg in ingress.init_args if hasattr(arg, "_bound_deployment"))._bound_deployment
    return ingress, model


def deployment_config(scaling: Scaling, batch: int = 4):
    return deployments(scaling, batch)[1]._deployment_config  # the model's


def test_fixed_replicas_with_bounded_queues_and_retry_after():
    config = deployment_config(Scaling(replicas=3, max_queued_requests=5))
    assert (config.num_replicas, config.autoscaling_config) == (3, None)
    assert (config.max_ongoing_requests, config.max_queued_requests) == (8, 5)  # two batches per replica
    assert (config.backpressure_config.status_code, config.backpressure_config.retry_after_s) == (503, 1.0)
    assert deployment_config(Scaling(max_ongoing_requests=2), batch=4).max_ongoing_requests == 4  # >= one batch


def test_autoscaling_between_min_and_max():
    auto = deployment_config(Scaling(autoscale=parse_autoscale("0:3"))).autoscaling_config
    assert (auto.min_replicas, auto.initial_replicas, auto.max_replicas, auto.target_ongoing_requests) == (0, 1, 3, 4)
    for text in ("3", "2:1", "0:0", "a:b"):
        with pytest.raises(ValueError, match="autoscale"):
            parse_autoscale(text)


def test_the_ingress_is_light_and_wide_the_model_narrow():
    ingress, model = deployments(Scaling(replicas=2, ingress_replicas=3, ingress_cpus=0.25))
    assert (ingress.name, model.name) == ("OSEDiffIngress", "OSEDiffModel")
    assert ingress._deployment_config.num_replicas == 3 and ingress.ray_actor_options["num_cpus"] == 0.25
    assert ingress._deployment_config.max_ongoing_requests == 128 > model._deployment_config.max_ongoing_requests == 8
    assert ingress._deployment_config.backpressure_config.status_code == 503
    assert model.ray_actor_options["num_cpus"] == 1.0
    # a local node: the ingress's share on top of the cores, so N one-CPU replicas fit N cores
    assert local_node_cpus(2, Scaling(replicas=2, ingress_replicas=3, ingress_cpus=0.25)) == 3


def test_http_options_and_edge_settings():
    edge = EdgeSettings(keep_alive_s=7, request_timeout_s=100)
    assert http_options("127.0.0.1", 8000, edge) == {"host": "127.0.0.1", "port": 8000, "keep_alive_timeout_s": 7,
                                                     "request_timeout_s": 105}
    assert EdgeSettings.from_env() == EdgeSettings()
    for bad, argument in (({"read_timeout_s": 0}, "read_timeout_s"), ({"max_per_client": -1}, "max_per_client"),
                          ({"read_timeout_s": 30, "body_timeout_s": 20}, "body_timeout_s"),
                          ({"log_format": "xml"}, "log_format")):
        with pytest.raises(EdgeError) as info:
            EdgeSettings(**bad)
        assert info.value.argument == argument
