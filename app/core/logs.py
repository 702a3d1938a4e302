"""Structured logs: one JSON object a line, with the request id and job id of its context.

Nothing secret goes in: API keys never reach a log call, prompts and image data are not
logged by our code, and RQ's job descriptions carry only the job id."""

import json
import logging
import sys
from contextvars import ContextVar, Token
from datetime import UTC, datetime

# One mutable dict per scope (a request, a job): threads a scope's work runs on get copies of
# the context but share the dict, so an id learnt there shows on the scope's every line.
_context: ContextVar[dict[str, str | None]] = ContextVar("log_context")


def bind(**fields: str | None) -> Token:
    """Open a log scope with these fields (undo with `unbind`)."""
    return _context.set({**_context.get({}), **fields})


def unbind(token: Token) -> None:
    """Close the scope `bind` opened."""
    _context.reset(token)


def annotate(**fields: str | None) -> None:
    """Add fields to the current scope, for its lines before and after this one."""
    current = _context.get(None)
    if current is None:
        _context.set(dict(fields))
    else:
        current.update(fields)


class JsonFormatter(logging.Formatter):
    """`{"ts", "level", "logger", "msg", "request_id", "job_id"[, "exc"]}` per line."""

    def format(self, record: logging.LogRecord) -> str:
        line = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
            "request_id": _context.get({}).get("request_id"),
            "job_id": _context.get({}).get("job_id"),
        }
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False)


def configure_logging(level: str) -> None:
    """Send every logger's records, JSON-formatted, to stderr at `level`."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # Servers and libraries that bring their own handlers log through ours instead.
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "rq.worker"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
