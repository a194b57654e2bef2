"""The model deployment: one :class:`~osediff.serve.engine.Engine` per replica behind
:func:`ray.serve.batch`.

It is reached only through the ingress's handle, with a request that is already checked and
decoded (:class:`~osediff.serve.engine.Job`), so its ``max_ongoing_requests`` slots hold work for
the model and nothing else: no client, however slow, occupies one. Requests that arrive within
``batch_wait_s`` (up to ``max_batch_size``) run as one :meth:`Engine.run`, in one worker thread,
so the replica's event loop keeps accepting the next batch while the model runs. That thread runs
at a lower CPU priority (``niceness``): where the model holds every core, the HTTP proxy, the
ingress and this replica's own event loop still get the CPU at once, so probes and refusals are
answered in milliseconds; the model loses nothing it could have used.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from ray import serve

from ..fileio import first_line
from .engine import Engine, Job, JobResult, ServeConfig
from .limits import error_status
from .logs import osediff_logger, quiet_serve_logs


@dataclass(frozen=True)
class JobFailure:
    """A request the model could not run: the HTTP status and the message for the client (the
    traceback stays in this replica's log)."""

    status: int
    message: str


def _lower_priority(niceness: int) -> None:
    """In the model thread (Linux: for this thread and those it starts, e.g. torch's)."""
    with contextlib.suppress(AttributeError, OSError):  # no nice here, or not allowed: run as is
        os.nice(niceness)


@serve.deployment
class OSEDiffModel:
    """One replica: the loaded model and its batching queue."""

    def __init__(self, config: ServeConfig, log_format: str = "text", niceness: int = 10) -> None:
        from ray.serve.metrics import Histogram

        quiet_serve_logs()
        self.log = osediff_logger("osediff.serve", log_format)
        self.engine = Engine(config)
        # one model thread: batches run one after another, as serve.batch hands them over
        self.model_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="osediff-model",
                                               initializer=_lower_priority, initargs=(niceness,))
        self._run.set_max_batch_size(config.max_batch_size)
        self._run.set_batch_wait_timeout_s(config.batch_wait_s)
        self.batch_sizes = Histogram("osediff_batch_size", description="requests per model batch",
                                     boundaries=[1, 2, 4, 8, 16, 32])

    def describe(self) -> dict:
        return {"device": self.engine.device, "dtype": self.engine.dtype}

    async def upscale(self, job: Job) -> JobResult | JobFailure:
        job.queued_at = time.perf_counter()  # this process's clock: "queue" is the wait for a batch here
        return await self._run(job)

    @serve.batch(max_batch_size=4, batch_wait_timeout_s=0.02)
    async def _run(self, jobs: list[Job]) -> list[JobResult | JobFailure]:
        self.batch_sizes.observe(len(jobs))
        results = await asyncio.get_running_loop().run_in_executor(self.model_thread, self.engine.run, jobs)
        reported: set[int] = set()
        answers: list[JobResult | JobFailure] = []
        for result in results:
            if isinstance(result, BaseException):
                status = error_status(result)
                if status >= 500 and id(result) not in reported:  # once per failed model call
                    reported.add(id(result))
                    self.log.error("a model call failed for %d request(s)", sum(r is result for r in results),
                                   exc_info=result)
                result = JobFailure(status, first_line(result) if status < 500 else
                                    f"internal error ({type(result).__name__}); see the server log")
            answers.append(result)
        return answers

    def __del__(self) -> None:
        self.model_thread.shutdown(wait=False, cancel_futures=True)
