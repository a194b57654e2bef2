"""Whether model files may be fetched now: one short probe per host, and network failures remembered.

Without a network, the hub client and urllib each wait out their timeouts and retries for every
file (over a minute per file was measured). Instead each host gets one HEAD request with a short
timeout; once a host is known to be unreachable every later lookup goes straight to the local
cache. A resolution that failed because of the network (a host that did not answer, offline mode)
is remembered too, so a second attempt (a fallback extractor, the next demo request) fails at once
instead of trying the network again.

Neither is kept for ever: an unreachable host and a network failure are forgotten after
:data:`FAILURE_TTL_S` seconds (the network may come back), and a failure with a local cause (a
folder that does not exist yet) is not remembered at all, so a long-lived process (the demo, the
server, a notebook) finds a file as soon as it appears. A host that answered stays known.
"""

from __future__ import annotations

import os
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Hashable
from typing import TypeVar

PROBE_TIMEOUT_S = 3.0
FAILURE_TTL_S = 60.0
HUB = "the hub"

_lock = threading.Lock()
_reachable: dict[str, tuple[bool, float]] = {}  # origin -> (answered, when probed)
_failures: dict[Hashable, tuple[Exception, float]] = {}  # key -> (the failure, when it happened)
T = TypeVar("T")


def _now() -> float:
    return time.monotonic()


def hub_endpoint() -> str:
    from huggingface_hub import constants

    return constants.ENDPOINT


def hub_offline_env() -> bool:
    """``HF_HUB_OFFLINE`` set (read now, not only when huggingface_hub was imported)."""
    from huggingface_hub import constants

    return constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE")


def _probe(url: str) -> bool:
    """True when a server answers at ``url`` within the timeout (any HTTP status counts)."""
    try:
        urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=PROBE_TIMEOUT_S).close()
    except urllib.error.HTTPError:
        return True
    except (urllib.error.URLError, OSError, ValueError):
        return False
    return True


def reachable(url: str) -> bool:
    """Whether the host of ``url`` answers (local schemes always do).

    Probed once; a host that did not answer is probed again after :data:`FAILURE_TTL_S` seconds.
    """
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https"):
        return True
    origin = f"{parts.scheme}://{parts.netloc}/"
    with _lock:  # concurrent callers wait for the one probe rather than each sending their own
        known = _reachable.get(origin)
        if known is None or (not known[0] and _now() - known[1] >= FAILURE_TTL_S):
            known = _reachable[origin] = (_probe(origin), _now())
        return known[0]


def offline_reason(url: str, local_files_only: bool, *, hub: bool = False) -> str | None:
    """Why ``url`` is not to be fetched now (a phrase to follow "not in the local cache"), or None."""
    if local_files_only:
        return "offline mode"
    if hub and hub_offline_env():
        return "HF_HUB_OFFLINE is set"
    if not reachable(url):
        return f"{HUB if hub else urllib.parse.urlsplit(url).netloc} could not be reached"
    return None


def remembered(key: Hashable, resolve: Callable[[], T], remember: Callable[[Exception], bool]) -> T:
    """``resolve()``, unless it failed under ``key`` in the last :data:`FAILURE_TTL_S` seconds.

    Only failures for which ``remember(err)`` is true are kept (those caused by the network); any
    other failure is looked up again on the next call.
    """
    with _lock:
        failed = _failures.get(key)
        if failed is not None and _now() - failed[1] >= FAILURE_TTL_S:
            del _failures[key]
            failed = None
    if failed is not None:
        raise failed[0].with_traceback(None)
    try:
        return resolve()
    except Exception as err:
        if remember(err):
            with _lock:
                _failures[key] = (err, _now())
        raise


def forget() -> None:
    """Drop what was learnt about hosts and failures (after the network came back; tests)."""
    with _lock:
        _reachable.clear()
        _failures.clear()
