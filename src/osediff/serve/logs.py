"""The service's log lines: text or JSON (``--log-format``), and Ray Serve's routine chatter kept out.

Every process of the service (the driver, Ray's HTTP proxy, the ingress and model replicas) logs
through :func:`osediff_logger`, one line per record on its stderr, which Ray forwards to the
``osediff serve`` console. What reaches the console: one access line per request (from the proxy),
warnings an operator must act on (a model call that failed, a replica that stopped), and the
driver's start and stop messages. What does not: Ray Serve's "Replica at capacity ... rejecting
request" (its router simply tries the next replica) and "Failed to get queue length" (a busy
replica answered its router late), a traceback per client that hangs up, and python-multipart's
line per malformed body (the client gets a 400 saying so).
"""

from __future__ import annotations

import json
import logging
import sys
import time

LOG_FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# Ray Serve messages about normal operation, logged at WARNING: a full replica (the router tries
# another), a replica slow to say how busy it is (the router goes on without the answer)
ROUTINE_SERVE_MESSAGES = ("Replica at capacity of max_ongoing_requests", "Failed to get queue length from Replica")


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, the record's ``fields``, and the
    exception's traceback as one string."""

    def format(self, record: logging.LogRecord) -> str:
        line = {"time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
                + f".{int(record.msecs):03d}Z",
                "level": record.levelname, "logger": record.name, "message": record.getMessage(),
                **getattr(record, "fields", {})}
        if record.exc_info:
            line["traceback"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False, default=str)


def formatter(log_format: str) -> logging.Formatter:
    return JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT)


def osediff_logger(name: str, log_format: str = "text", stream=None) -> logging.Logger:
    """``name``'s logger with one handler on ``stream`` (stderr) in ``log_format``; calling it again
    replaces that handler, so each process configures it once however often it is asked."""
    logger = logging.getLogger(name)
    for handler in [h for h in logger.handlers if getattr(h, "osediff", False)]:
        logger.removeHandler(handler)
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.osediff = True
    handler.setFormatter(formatter(log_format))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False  # Ray's root handlers would print it a second time
    return logger


class _DropRoutine(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not (isinstance(record.msg, str) and record.msg.startswith(ROUTINE_SERVE_MESSAGES))


def quiet_serve_logs() -> None:
    """In a replica: drop Ray Serve's routine capacity warnings and python-multipart's chatter."""
    serve_logger = logging.getLogger("ray.serve")
    if not any(isinstance(f, _DropRoutine) for f in serve_logger.filters):
        serve_logger.addFilter(_DropRoutine())
    for name in ("multipart", "multipart.multipart", "python_multipart", "python_multipart.multipart"):
        logging.getLogger(name).setLevel(logging.ERROR)
