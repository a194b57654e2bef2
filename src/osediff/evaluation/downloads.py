"""Telling "weights could not be downloaded" apart from real failures, and not retrying downloads.

Metric networks fetch their weights on first use (pyiqa from the hub or GitHub, torchvision and
CLIP from their own hosts). Offline, pyiqa's plain URL downloads fail at once, but the hub client
behind timm retries with back-off for about a minute per file; so once one download has failed we
build the remaining metrics with downloads switched off.
"""

from __future__ import annotations

import contextlib
import socket
import urllib.error
from collections.abc import Iterator

from ..errors import OSEDiffError

# exception class names from requests, httpx and huggingface_hub that mean "could not fetch"
_NETWORK_ERROR_NAMES = {
    "ConnectError", "ConnectTimeout", "ConnectionError", "ReadTimeout", "Timeout", "TransportError",
    "LocalEntryNotFoundError", "OfflineModeIsEnabled", "DownloadsDisabledError",
}


class DownloadsDisabledError(OSEDiffError, ConnectionError):
    """Raised for any connection attempt made while downloads are switched off."""


def is_network_error(err: BaseException) -> bool:
    """True when ``err`` or anything in its cause chain is a failed download or connection."""
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        # HTTPError is a URLError but means the server answered (404, 403): not an offline problem
        if isinstance(current, (urllib.error.URLError, ConnectionError, socket.gaierror, TimeoutError)) and (
                not isinstance(current, urllib.error.HTTPError)):
            return True
        if type(current).__name__ in _NETWORK_ERROR_NAMES:
            return True
        current = current.__cause__ or current.__context__
    return False


@contextlib.contextmanager
def downloads_disabled(enabled: bool = True) -> Iterator[None]:
    """Within the block, host-name lookups fail at once and the hub client runs in offline mode.

    Files already in the local caches still load; everything else fails fast with
    DownloadsDisabledError instead of waiting on retries.
    """
    if not enabled:
        yield
        return
    original_lookup = socket.getaddrinfo

    def refuse(host, *args, **kwargs):
        raise DownloadsDisabledError(f"downloads are switched off (tried to reach {host})")

    try:
        from huggingface_hub import constants as hub_constants
    except ImportError:  # pragma: no cover - huggingface_hub is a dependency of diffusers
        hub_constants = None
    hub_offline = hub_constants.HF_HUB_OFFLINE if hub_constants else None
    socket.getaddrinfo = refuse
    if hub_constants:
        hub_constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        socket.getaddrinfo = original_lookup
        if hub_constants:
            hub_constants.HF_HUB_OFFLINE = hub_offline
