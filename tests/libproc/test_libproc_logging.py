"""Logging: ``configure_logging`` governs libproc's own log lines too.

libproc's modules take their loggers at import time, before a program (``mesa-node
--log-format=json``) gets to configure logging; the format and level chosen afterwards must still
apply to those loggers, and test capture (``structlog.testing.capture_logs``) must still see
them."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from structlog.testing import capture_logs

import libproc
from libproc import UPID, Runtime


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """Put the default (console, info) configuration back, whatever the test did."""
    try:
        yield
    finally:
        libproc.configure_logging("console", "info")


def drop_one(rt: Runtime, tag: str) -> None:
    """Make the runtime log a ``message_dropped`` warning (first of its kind)."""
    rt.send(UPID(f"nobody-{tag}", rt.host, rt.port), "x")


async def test_json_format_applies_to_libproc_loggers(
    rt: Runtime, capsys: pytest.CaptureFixture[str], restore_logging: None
) -> None:
    libproc.configure_logging("json")
    drop_one(rt, "json")
    err = capsys.readouterr().err
    lines = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    dropped = [e for e in lines if e.get("event") == "message_dropped"]
    assert len(dropped) == 1, err
    assert dropped[0]["level"] == "warning"
    assert dropped[0]["reason"] == "unknown_recipient"
    assert dropped[0]["runtime"] == rt.address
    assert dropped[0]["logger"] == "libproc.runtime"


async def test_console_format_is_key_value(
    rt: Runtime, capsys: pytest.CaptureFixture[str], restore_logging: None
) -> None:
    libproc.configure_logging("console")
    drop_one(rt, "console")
    err = capsys.readouterr().err
    line = next(line for line in err.splitlines() if "message_dropped" in line)
    assert "level='warning'" in line and "reason='unknown_recipient'" in line


async def test_level_applies_after_import(
    rt: Runtime, capsys: pytest.CaptureFixture[str], restore_logging: None
) -> None:
    libproc.configure_logging("console", "error")
    drop_one(rt, "quiet")  # a warning: below the level
    assert "message_dropped" not in capsys.readouterr().err
    libproc.configure_logging("console", "debug")
    rt.spawn(libproc.Process())
    get = libproc.get_logger("test")
    get.debug("debug_line")
    assert "debug_line" in capsys.readouterr().err


def test_is_enabled_for_follows_the_configured_level(restore_logging: None) -> None:
    """What a hot line asks before computing its fields: the level in force now, for loggers
    bound before the configuration too, and every level while a test captures."""
    import logging

    log = libproc.get_logger("test.enabled")
    libproc.configure_logging("console", "warning")
    assert not log.is_enabled_for(logging.INFO) and not log.is_enabled_for(logging.DEBUG)
    assert log.is_enabled_for(logging.WARNING) and log.is_enabled_for(logging.ERROR)
    assert log.get_effective_level() == logging.WARNING
    libproc.configure_logging("console", "debug")
    assert log.is_enabled_for(logging.DEBUG) and log.is_enabled_for(logging.INFO)
    libproc.configure_logging("console", "warning")
    with capture_logs() as logs:
        assert log.is_enabled_for(logging.INFO)  # capture sees every event, whatever the level
        log.info("seen")
    assert [e["event"] for e in logs] == ["seen"]


async def test_capture_logs_still_works_after_reconfiguring(
    rt: Runtime, restore_logging: None
) -> None:
    libproc.configure_logging("json")
    with capture_logs() as logs:
        drop_one(rt, "captured")
    assert [e["event"] for e in logs if e["event"] == "message_dropped"] == ["message_dropped"]


def test_bad_configuration_is_refused() -> None:
    with pytest.raises(ValueError, match="format"):
        libproc.configure_logging("xml")
    with pytest.raises(ValueError, match="level"):
        libproc.configure_logging("console", "chatty")
