"""One rotating log file shared by the coordinator and every worker process.

concurrent-log-handler locks the file around each write, so lines from several processes never
interleave mid-line and rotation is safe while others write.
"""

from __future__ import annotations

import logging
from pathlib import Path

from concurrent_log_handler import ConcurrentRotatingFileHandler

LOGGER_NAME = "tenantmig.run"
_FORMAT = "%(asctime)s %(process)d run=%(run_id)s tenant=%(tenant)s %(levelname)s %(message)s"


class _RunContext(logging.Filter):
    def __init__(self, run_id: int | None) -> None:
        super().__init__()
        self.run_id = run_id

    def filter(self, record: logging.LogRecord) -> bool:
        record.run_id = self.run_id if self.run_id is not None else "-"
        if not hasattr(record, "tenant"):
            record.tenant = "-"
        return True


def configure_run_log(log_file: Path | None, run_id: int | None) -> logging.Logger:
    """The run logger for this process, writing to ``log_file`` (or nowhere if None)."""
    logger = logging.getLogger(LOGGER_NAME)
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
    for existing in list(logger.filters):
        logger.removeFilter(existing)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    if log_file is None:
        logger.addHandler(logging.NullHandler())
        return logger
    log_file.parent.mkdir(parents=True, exist_ok=True)
    handler = ConcurrentRotatingFileHandler(
        str(log_file), maxBytes=20 * 1024 * 1024, backupCount=5, encoding="utf-8"
    )
    handler.setFormatter(logging.Formatter(_FORMAT))
    handler.addFilter(_RunContext(run_id))
    logger.addHandler(handler)
    return logger
