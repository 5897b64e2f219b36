"""engines.proc: how a command ended, and the same clear error for every way of running one."""

from __future__ import annotations

from pathlib import Path

import pytest

from shipyard.engines import EngineError
from shipyard.engines.proc import Result, capture, command, run, succeeds


def test_capture_returns_a_failing_command_s_status_and_both_streams(tmp_path: Path) -> None:
    script = "echo out; echo err >&2; echo $GREETING; pwd; exit 3"
    result = capture(command("sh", "-c", script, env={"GREETING": "hello"}, cwd=tmp_path))

    assert result == Result(3, f"out\nhello\n{tmp_path}\n", "err\n")


def test_a_program_that_cannot_start_is_an_engine_error_for_each_way(tmp_path: Path) -> None:
    unexecutable = tmp_path / "tool"
    unexecutable.write_text("#!/bin/sh\n")

    with pytest.raises(EngineError, match=r"tool is not executable \(check its permissions\)"):
        run(command(str(unexecutable)))
    missing = r"^shipyard-no-such-tool is not installed or not on PATH \(needed for: a test\)$"
    with pytest.raises(EngineError, match=missing):
        capture(command("shipyard-no-such-tool"), what="a test")
    assert not succeeds([str(unexecutable)])
    assert not succeeds(["shipyard-no-such-tool"])
    assert succeeds(["sh", "-c", 'test "$X" = 1'], env={"X": "1"})


def test_a_child_killed_by_ctrl_c_reads_as_an_interruption() -> None:
    with pytest.raises(KeyboardInterrupt):
        capture(command("sh", "-c", "exit 130"))  # as shells and Compose report it
