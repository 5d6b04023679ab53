"""Log format selection: a terminal gets console lines, systemd (JOURNAL_STREAM) and pipes get JSON; progress
lines (stdout) are rendered the same way as the log lines, so a terminal never shows the two mixed."""
from __future__ import annotations

import io
import json

import pytest
import structlog

from daemon.logs import choose_format, configure, say, say_error


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("fmt,tty,env,want", [
    ("auto", True, {}, "console"),
    ("auto", False, {}, "json"),
    ("auto", True, {"JOURNAL_STREAM": "8:12345"}, "json"),  # systemd: the journal wants JSON even on a tty
    ("auto", False, {"JOURNAL_STREAM": "8:12345"}, "json"),
    ("json", True, {}, "json"),
    ("console", False, {"JOURNAL_STREAM": "8:1"}, "console"),
])
def test_choose_format(fmt, tty, env, want):
    assert choose_format(fmt, tty, env) == want


@pytest.fixture
def restore_logging():
    yield
    configure("info", fmt="json")
    structlog.reset_defaults()


def test_terminal_gets_console_lines_for_logs_and_progress(restore_logging):
    err, out = _Tty(), _Tty()
    assert configure("info", fmt="auto", stream=err, env={}, out=out) == "console"
    structlog.get_logger("t").info("hello_event", key=42)
    say("ready: http://127.0.0.1:8000")
    for text in (err.getvalue(), out.getvalue()):
        assert text.strip() and not text.lstrip().startswith("{"), text
    assert "hello_event" in err.getvalue() and "key" in err.getvalue() and "42" in err.getvalue()
    assert "tradingd: ready: http://127.0.0.1:8000" in out.getvalue()


@pytest.mark.parametrize("env", [{}, {"JOURNAL_STREAM": "8:99"}])
def test_pipe_and_journal_get_json_lines_for_logs_progress_and_errors(restore_logging, env):
    err, out = (_Tty(), _Tty()) if env else (io.StringIO(), io.StringIO())
    assert configure("info", fmt="auto", stream=err, env=env, out=out) == "json"
    structlog.get_logger("t").info("hello_event", key=42)
    say("first run: trained 1m in 3.0 s")
    say_error("fatal: pipeline: boom")
    err_lines = [json.loads(x) for x in err.getvalue().splitlines()]
    out_lines = [json.loads(x) for x in out.getvalue().splitlines()]
    assert [r["event"] for r in err_lines] == ["hello_event", "tradingd: fatal: pipeline: boom"]
    assert err_lines[0]["key"] == 42 and err_lines[1]["level"] == "error"
    assert [r["event"] for r in out_lines] == ["tradingd: first run: trained 1m in 3.0 s"]
    assert all("timestamp" in r for r in err_lines + out_lines)
