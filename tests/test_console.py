"""The console: a terminal shows a long search as one live line; a log file gets every plain line."""

from __future__ import annotations

import io
import logging

import pytest

from deltaml.ml.tuning import TuningProgress, duration_text
from deltaml.report.console import ConsoleHandler


def _progress(done: int, best: float | None = 0.8462, left: float | None = 190.0) -> TuningProgress:
    return TuningProgress(done, 48, "gbt", done, 12, "auc_roc", best, "lightgbm" if best else None, 45.2, left)


def _emit(handler: ConsoleHandler) -> str:
    log = logging.getLogger("deltaml.test_console")
    log.handlers[:] = [handler]
    log.setLevel(logging.INFO)
    log.propagate = False
    handler.setFormatter(logging.Formatter("deltaml %(message)s"))
    log.info("trial gbt 1/12: validation auc_roc 0.8100", extra={"progress": _progress(1)})
    log.info("trial gbt 2/12: validation auc_roc 0.8462", extra={"progress": _progress(2)})
    log.warning("gbt: a warning between trials")
    log.info("trial gbt 3/12: validation auc_roc 0.8300", extra={"progress": _progress(3)})
    log.info("leaderboard (validation auc_roc):")
    handler.close()
    stream = handler.stream
    assert isinstance(stream, io.StringIO)
    return stream.getvalue()


def test_a_terminal_rewrites_one_live_line_and_other_lines_print_whole(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "200")
    shown = _emit(ConsoleHandler(io.StringIO(), live=True))
    erase = "\r\x1b[2K"
    line = "tuning 2/48 trials (gbt 2/12), best validation auc_roc 0.8462 (lightgbm), 45s elapsed, about 3m 10s left"
    assert shown == (
        f"{erase}{line.replace('2/48', '1/48').replace('gbt 2/12', 'gbt 1/12')}"
        f"{erase}{line}"
        f"{erase}deltaml gbt: a warning between trials\n"
        f"{erase}{line.replace('2/48', '3/48').replace('gbt 2/12', 'gbt 3/12')}"
        f"{erase}deltaml leaderboard (validation auc_roc):\n"
    )


def test_the_live_line_is_cut_to_the_terminal_width(monkeypatch: pytest.MonkeyPatch) -> None:
    # A wrapped line could not be erased by a carriage return: it is cut to the width instead.
    monkeypatch.setenv("COLUMNS", "40")
    shown = _emit(ConsoleHandler(io.StringIO(), live=True))
    assert "\r\x1b[2Ktuning 1/48 trials (gbt 1/12), best val\r" in shown  # 39 characters


def test_a_file_or_pipe_gets_the_plain_trial_lines() -> None:
    written = _emit(ConsoleHandler(io.StringIO()))  # a StringIO is not a terminal
    assert "\x1b" not in written and "\r" not in written
    assert written.splitlines() == [
        "deltaml trial gbt 1/12: validation auc_roc 0.8100",
        "deltaml trial gbt 2/12: validation auc_roc 0.8462",
        "deltaml gbt: a warning between trials",
        "deltaml trial gbt 3/12: validation auc_roc 0.8300",
        "deltaml leaderboard (validation auc_roc):",
    ]


def test_the_live_line_says_what_is_known() -> None:
    assert _progress(1, best=None, left=None).text() == (
        "tuning 1/48 trials (gbt 1/12), no finished trial yet, 45s elapsed"
    )
    assert [duration_text(s) for s in (0.4, 59.6, 190, 3600 + 5 * 60 + 7)] == ["0s", "1m 00s", "3m 10s", "1h 05m"]
