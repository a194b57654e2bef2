"""What the service's front knows of the service: draining on SIGTERM, and replicas running.

Ray Serve's own shutdown stops the HTTP proxies with the replicas, which cuts every request in
flight. So ``osediff serve`` drains first, through one small named actor (:class:`DrainControl`,
no CPU) that the ingress replicas and the proxy's middleware watch:

1. the driver calls :meth:`DrainControl.start`;
2. each ingress replica, waiting in :meth:`DrainControl.wait_for_drain`, turns to draining: new
   requests get a JSON 503 (``Retry-After``, connection closed), ``/readyz`` answers 503 so that a
   load balancer stops sending, ``/healthz`` still 200;
3. each ingress replica reports its requests in flight (every 0.5 s, every 0.1 s once draining);
   the driver waits (:func:`drain`) until every ingress replica heard from has reported draining
   with nothing in flight, or the grace period is over;
4. only then does it shut Serve and Ray down.

:class:`ServiceWatch` is what the probes are answered from: a thread that asks Serve every half
second how many model and ingress replicas run, and the control whether the service drains.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import ray

from .edge import Topology

STALE_S = 2.0  # a replica that has not reported for this long is gone
CALL_TIMEOUT_S = 5.0  # a control call that takes longer: Ray itself is going (its processes were signalled too)


@ray.remote(num_cpus=0)
class DrainControl:
    """Whether the service drains, and each ingress replica's requests in flight."""

    def __init__(self) -> None:
        self.draining = asyncio.Event()
        self.reports: dict[str, tuple[int, bool, float]] = {}

    async def wait_for_drain(self) -> bool:
        await self.draining.wait()
        return True

    def start(self) -> None:
        self.draining.set()

    def is_draining(self) -> bool:
        return self.draining.is_set()

    def report(self, replica: str, in_flight: int, draining: bool) -> None:
        self.reports[replica] = (in_flight, draining, time.monotonic())

    def state(self) -> dict[str, tuple[int, bool]]:
        """Replicas heard from in the last ``STALE_S`` seconds: (requests in flight, draining)."""
        now = time.monotonic()
        return {replica: (in_flight, draining) for replica, (in_flight, draining, at) in self.reports.items()
                if now - at < STALE_S}


@dataclass(frozen=True)
class DrainReport:
    drained: bool  # every ingress replica drained with nothing left in flight
    seconds: float
    in_flight: int  # what was still running when the grace period ran out (0 when drained)
    at_start: int  # in flight when draining began
    ray_gone: bool = False  # Ray stopped answering (its own processes were signalled too)


def drain(control, grace_s: float, *, interrupted: Callable[[], bool] = lambda: False,
          poll_s: float = 0.1) -> DrainReport:
    """Start draining and wait until every ingress replica heard from reports draining with no request
    in flight, three polls running, or ``grace_s`` passes, or ``interrupted()`` says stop now."""
    started = time.monotonic()
    quiet, in_flight, at_start = 0, 0, None
    try:
        ray.get(control.start.remote(), timeout=CALL_TIMEOUT_S)
    except Exception:  # Ray is stopping under us: nothing left to wait for
        return DrainReport(False, time.monotonic() - started, 0, 0, ray_gone=True)
    while True:
        try:
            state = ray.get(control.state.remote(), timeout=CALL_TIMEOUT_S)
        except Exception:
            return DrainReport(False, time.monotonic() - started, in_flight, at_start or in_flight, ray_gone=True)
        in_flight = sum(count for count, _ in state.values())
        all_draining = bool(state) and all(draining for _, draining in state.values())
        if at_start is None and all_draining:
            at_start = in_flight
        quiet = quiet + 1 if all_draining and in_flight == 0 else 0
        elapsed = time.monotonic() - started
        if quiet >= 3 or elapsed >= grace_s or interrupted():
            return DrainReport(quiet >= 3, elapsed, in_flight, at_start or in_flight)
        time.sleep(poll_s)


def start_control(topology: Topology):
    """The control actor, named so that the proxies and the replicas find it (it lives as long as the
    driver that made it)."""
    return DrainControl.options(name=topology.control, namespace=topology.namespace).remote()


class ServiceWatch(threading.Thread):
    """Draining, and the model and ingress replicas running, as last seen (every ``period_s``).

    ``known`` is False until Serve has described the application once; the numbers are then those
    of the last successful look (a busy controller leaves them as they were)."""

    def __init__(self, topology: Topology, period_s: float = 0.5) -> None:
        super().__init__(daemon=True, name="osediff-service-watch")
        self.topology, self.period_s = topology, period_s
        self.known = self.draining = False
        self.model_running = self.ingress_running = 0
        self._control = None
        self._stop = threading.Event()

    def readiness(self) -> str | None:
        """Why the service cannot take requests now, or None when it can."""
        if self.draining:
            return "the service is shutting down"
        if not self.known:
            return "the service is starting"
        if self.ingress_running == 0:
            return "no ingress replica is running (one is starting)"
        if self.model_running == 0 and not self.topology.scales_to_zero:
            return "no model replica is running (one is starting)"
        return None

    def run(self) -> None:
        from ray import serve

        while not self._stop.wait(self.period_s):
            try:
                deployments = serve.status().applications[self.topology.app].deployments
                self.model_running = _running(deployments.get(self.topology.model))
                self.ingress_running = _running(deployments.get(self.topology.ingress))
                self.known = True
            except Exception:  # not deployed yet, or the controller busy: keep the last look
                pass
            try:
                if self._control is None:
                    self._control = ray.get_actor(self.topology.control, namespace=self.topology.namespace)
                self.draining = ray.get(self._control.is_draining.remote(), timeout=CALL_TIMEOUT_S)
            except Exception:  # no control (tests, or a cluster run without it) or Ray going down
                pass

    def stop(self) -> None:
        self._stop.set()


def _running(status) -> int:
    if status is None:
        return 0
    return sum(count for state, count in status.replica_states.items() if str(state).endswith("RUNNING"))
