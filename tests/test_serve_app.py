"""The Ray Serve application's options: replicas or autoscaling, and queues that are always bounded."""

from __future__ import annotations

from pathlib import Path

import pytest

from osediff.model_files import ModelFiles, ModelOptions
from osediff.serve.app import Scaling, build_app, parse_autoscale
from osediff.serve.engine import ServeConfig

pytest.importorskip("ray.serve")


def deployment_config(scaling: Scaling, batch: int = 4):
    config = ServeConfig(ModelOptions(), ModelFiles(Path("base"), Path("w.pkl")), max_batch_size=batch)
    app = build_app(config, scaling)
    return app._bound_deployment._deployment_config  # what serve.run would deploy


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
