"""Run at the start of every Python process of `nox -s mutation` (its PYTHONPATH names this
folder, and Python imports a `sitecustomize` it finds there).

mutmut maps each function to the tests that reach it by recording, during one "stats" run of
the tests, the functions each test calls. It records only inside the test process, but much of
the backup engine runs in processes the tests start: `shipyard backup ...` as the CronJob runs
it, a rendered kit's `invoke` tasks. Their functions would be "not reached by any test" and
never judged. So during the stats run (SHIPYARD_MUTMUT_HITS set, by tests/conftest.py) such a
process appends each function it reaches, once, to that file, and the test process credits
them to the test that is running. A process of another user (pgBackRest's archive_command runs
as postgres) cannot write the file and records nothing: its functions are judged by fewer
tests, never a mutant wrongly killed.
"""

import fcntl
import importlib
import os
from pathlib import Path
from typing import Any

_HITS = os.environ.get("SHIPYARD_MUTMUT_HITS")

# Only while the stats run lasts (the file is removed at its end): a mutant's test process
# runs the mutant in its children, never records.
if _HITS and Path(_HITS).is_file():
    _file = Path(_HITS)
    trampoline: Any = importlib.import_module("mutmut.mutation.trampoline")
    _seen: set[str] = set()

    def _record(name: str, caller: str | None = None) -> None:
        if name in _seen:
            return
        _seen.add(name)
        try:  # never created here: a process outliving the stats run writes nothing
            fd = os.open(_file, os.O_WRONLY | os.O_APPEND)
        except OSError:
            return
        try:  # locked: the test process reads and empties the file under the same lock
            fcntl.flock(fd, fcntl.LOCK_EX)
            os.write(fd, f"{name}\n".encode())
        finally:
            os.close(fd)

    # The trampolines record through this name, and only while the mode is "stats".
    trampoline.record_trampoline_hit = _record
    os.environ["MUTANT_UNDER_TEST"] = "stats"
