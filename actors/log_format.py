"""How `triobus worker` logs: text lines or JSON objects, one per record.

Both carry the timestamp (UTC, ISO 8601), level, logger and message; a record logged with
`extra={"domain": ..., "command_id": ...}` (as the acker logs results) carries those as
fields too: JSON keys, or `key=value` after a text line's message.
"""

from __future__ import annotations

import enum
import json
import logging
from datetime import UTC, datetime

# Record attributes shown as fields when a log call passes them in `extra`.
FIELDS = ("domain", "command_id", "batch_id")


class LogFormat(enum.StrEnum):
    TEXT = "text"
    JSON = "json"


class _Formatter(logging.Formatter):
    def __init__(self, kind: LogFormat) -> None:
        super().__init__()
        self.kind = kind

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "timestamp": datetime.fromtimestamp(record.created, UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = {f: str(getattr(record, f)) for f in FIELDS if hasattr(record, f)}
        if record.exc_info:
            fields["exception"] = self.formatException(record.exc_info)
        if self.kind is LogFormat.JSON:
            return json.dumps({**entry, **fields})
        text = " ".join(f"{k}={v}" for k, v in fields.items() if k != "exception")
        line = f"{entry['timestamp']} {entry['level']} {entry['logger']}: {entry['message']}"
        line = f"{line} {text}" if text else line
        return f"{line}\n{fields['exception']}" if "exception" in fields else line


def configure_logging(level: str, kind: LogFormat) -> None:
    """Log records at `level` and above to standard error, in `kind`."""
    handler = logging.StreamHandler()
    handler.setFormatter(_Formatter(kind))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
