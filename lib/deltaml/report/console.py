"""The console: plain log lines, and on a terminal one live line for a long search, rewritten in place."""

from __future__ import annotations

import logging
import shutil
from typing import TextIO

# Carriage return, then erase the whole line (ANSI EL 2): the live line is redrawn from its start.
_ERASE = "\r\x1b[2K"


class ConsoleHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Log lines as they are; on a terminal, a record carrying ``progress`` rewrites one live line instead.

    A step marks a record as progress with ``extra={"progress": obj}``, where ``obj.text()`` is the
    live line (the fit step's trials, :class:`deltaml.ml.tuning.TuningProgress`). On a terminal the
    line is redrawn in place; any other record first erases it, then prints as usual, so warnings
    and the leaderboard read as before. Off a terminal (a file, a pipe, a Databricks job's log)
    every record prints its plain message, progress records included.
    """

    def __init__(self, stream: TextIO, live: bool | None = None) -> None:
        super().__init__(stream)
        self.live = _is_terminal(stream) if live is None else live
        self._showing = False

    def emit(self, record: logging.LogRecord) -> None:
        progress = getattr(record, "progress", None)
        try:
            if self.live and progress is not None:
                width = shutil.get_terminal_size().columns
                self.stream.write(_ERASE + progress.text()[: max(20, width - 1)])
                self.flush()
                self._showing = True
                return
            if self._showing:
                self.stream.write(_ERASE)
                self._showing = False
        except Exception:  # logging must never raise into the step
            self.handleError(record)
            return
        super().emit(record)

    def close(self) -> None:
        if self._showing:  # leave the last live line on screen, and the cursor below it
            self.stream.write("\n")
            self._showing = False
        super().close()


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False
