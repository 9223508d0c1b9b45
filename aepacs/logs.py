"""Process logging: plain text lines, or one JSON object per line for a log collector (``log.format``)."""

from __future__ import annotations

import datetime as dt
import json
import logging

__all__ = ["JsonFormatter", "configure"]

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class JsonFormatter(logging.Formatter):
    """``{"time", "level", "logger", "message"[, "exception"]}`` per record, UTC times."""

    def format(self, record: logging.LogRecord) -> str:
        out = {"time": dt.datetime.fromtimestamp(record.created, dt.timezone.utc).isoformat(timespec="milliseconds"),
               "level": record.levelname, "logger": record.name, "message": record.getMessage()}
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False)


def configure(level: str | int, fmt: str = "text") -> None:
    """Log to stderr at `level` as ``text`` or ``json``; quiet the libraries' chatter unless debugging."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    logging.basicConfig(level=level, handlers=[handler], force=True)
    if level != logging.DEBUG:  # pydicom's remarks on odd input: the archive keeps the bytes as they came
        logging.getLogger("pydicom").setLevel(logging.ERROR)
        logging.getLogger("pynetdicom").setLevel(logging.WARNING)  # aepacs logs one line per association
