"""The mutation ledger (tests/mutation_ledger.py): mutmut's verdicts out of a work folder into
docs/mutation-ledger.json and back into a fresh work folder, as `nox -s mutation` moves them."""

from __future__ import annotations

import json
import os
from pathlib import Path

from tests import mutation_ledger

DB = "shipyard/backup/db.py"
KEY = "shipyard.backup.db."
TESTS = ["tests/test_db.py"]


def _meta(work: Path, module: str, codes: dict[str, int | None], hashes: dict[str, str]) -> Path:
    """A work folder's `.meta` as mutmut writes it."""
    meta = work / "mutants" / "src" / f"{module}.meta"
    meta.parent.mkdir(parents=True, exist_ok=True)
    meta.write_text(
        json.dumps(
            {
                "exit_code_by_key": codes,
                "hash_by_function_name": hashes,
                "type_check_error_by_key": {},
                "durations_by_key": {"x": 1.0},
                "estimated_durations_by_key": {"x": 1.0},
            }
        )
    )
    return meta


def test_verdicts_go_into_the_ledger_and_back_into_a_fresh_work_folder(tmp_path: Path) -> None:
    ledger = tmp_path / "ledger.json"
    ledger.write_text(json.dumps({"shipyard/tasks/other.py": {"x_f": {"hash": "h", "codes": [1]}}}))
    first = tmp_path / "first"
    codes = {
        f"{KEY}x_tool__mutmut_1": 1,
        f"{KEY}x_tool__mutmut_2": 0,
        f"{KEY}x_tool__mutmut_3": None,
        f"{KEY}xǁ_Readerǁread__mutmut_1": 36,
        f"{KEY}x_ended__mutmut_1": None,
    }
    hashes = {"x_tool": "aaa", "xǁ_Readerǁread": "bbb", "x_ended": "ccc", "x_plain": "ddd"}
    _meta(first, DB, codes, hashes)

    assert mutation_ledger.save(first, ledger) == 4  # three here, one of the other module
    saved = json.loads(ledger.read_text(encoding="utf-8"))
    assert saved == {
        DB: {
            "x_ended": {"hash": "ccc", "codes": [None]},
            "x_tool": {"hash": "aaa", "codes": [1, 0, None]},
            "xǁ_Readerǁread": {"hash": "bbb", "codes": [36]},
        },
        "shipyard/tasks/other.py": {"x_f": {"hash": "h", "codes": [1]}},
    }
    # One function to a line, so that a commit shows which functions a run judged.
    assert '    "x_tool": {"hash": "aaa", "codes": [1, 0, null]}' in ledger.read_text("utf-8")

    fresh = tmp_path / "fresh"
    assert mutation_ledger.seed(fresh, ledger, [DB, "shipyard/backup/new.py"]) == 3
    meta = json.loads((fresh / "mutants" / "src" / f"{DB}.meta").read_text())
    # Only the judged ones: mutmut gives every other mutant of an unchanged function None.
    assert meta["exit_code_by_key"] == {
        f"{KEY}x_tool__mutmut_1": 1,
        f"{KEY}x_tool__mutmut_2": 0,
        f"{KEY}xǁ_Readerǁread__mutmut_1": 36,
    }
    assert meta["hash_by_function_name"] == {k: v for k, v in hashes.items() if k != "x_plain"}
    assert not (fresh / "mutants" / "src" / "shipyard/backup/new.py.meta").exists()
    # Saved again before mutmut ran (a run that failed at once): the ledger is as it was.
    assert mutation_ledger.save(fresh, ledger) == 4
    assert json.loads(ledger.read_text("utf-8")) == saved


def test_a_work_folder_that_has_verdicts_is_never_overwritten(tmp_path: Path) -> None:
    ledger = tmp_path / "ledger.json"
    ledger.write_text(json.dumps({DB: {"x_tool": {"hash": "old", "codes": [0]}}}))
    meta = _meta(tmp_path, DB, {f"{KEY}x_tool__mutmut_1": 1}, {"x_tool": "new"})
    text = meta.read_text()
    assert mutation_ledger.seed(tmp_path, ledger, [DB]) == 0
    assert meta.read_text() == text


def test_a_stale_work_folder_never_erases_the_ledgers_verdicts(tmp_path: Path) -> None:
    """A build/ from an older run knows fewer verdicts than the committed ledger: the ledger
    keeps them for each function whose code is the same; a changed function takes the
    folder's; a function the folder's module no longer has (deleted, renamed) goes."""
    ledger = tmp_path / "ledger.json"
    ledger.write_text(
        json.dumps(
            {
                DB: {
                    "x_tool": {"hash": "aaa", "codes": [1, 0, 1]},
                    "x_ended": {"hash": "old", "codes": [1, 1]},
                    "x_pipe": {"hash": "ppp", "codes": [0]},
                }
            }
        )
    )
    codes = {
        f"{KEY}x_tool__mutmut_1": None,
        f"{KEY}x_tool__mutmut_2": 1,
        f"{KEY}x_tool__mutmut_3": None,
        f"{KEY}x_ended__mutmut_1": None,
        f"{KEY}x_ended__mutmut_2": 0,
    }
    _meta(tmp_path, DB, codes, {"x_tool": "aaa", "x_ended": "new"})
    assert mutation_ledger.save(tmp_path, ledger) == 4
    merged = {
        DB: {
            "x_ended": {"hash": "new", "codes": [None, 0]},
            "x_tool": {"hash": "aaa", "codes": [1, 1, 1]},
        }
    }
    assert json.loads(ledger.read_text("utf-8")) == merged
    # A `.meta` written before its source last changed (a run stopped before mutmut wrote the
    # module anew, after a pull brought newer code and ledger) is left out.
    source = tmp_path / "src" / DB
    source.parent.mkdir(parents=True)
    source.write_text("def tool(): ...\n")
    meta = tmp_path / "mutants" / "src" / f"{DB}.meta"
    os.utime(meta, (source.stat().st_mtime - 60,) * 2)
    ledger.write_text(json.dumps({DB: {"x_tool": {"hash": "zzz", "codes": [0]}}}))
    mutation_ledger.save(tmp_path, ledger)
    assert json.loads(ledger.read_text("utf-8")) == {DB: {"x_tool": {"hash": "zzz", "codes": [0]}}}


def test_a_module_left_out_of_the_last_run_is_mutated_and_its_tests_found_again(
    tmp_path: Path,
) -> None:
    """A plain copy (written by a run that did not mutate the module) is newer than its source,
    so mutmut would keep it as it is; and its stats know no test of that module's functions."""
    copies = tmp_path / "mutants" / "src" / "shipyard" / "backup"
    copies.mkdir(parents=True)
    (copies / "db.py").write_text("def tool():\n    return 1\n")  # plain: left out before
    mutated = "def x_tool__mutmut_orig():\n    return 1\n"
    (copies / "engine.py").write_text(mutated)  # mutated by the last run
    # A module with nothing to mutate: plain after every run, its .meta lists no mutant.
    (copies / "kinds.py").write_text('MANUAL = "manual"\n')
    _meta(tmp_path, "shipyard/backup/kinds.py", {}, {})
    stats = tmp_path / "mutants" / "mutmut-stats.json"
    stats.write_text("{}")
    modules = [DB, *(f"shipyard/backup/{name}.py" for name in ("engine", "kinds", "new"))]

    assert mutation_ledger.refresh(tmp_path, modules) == [DB]
    assert not (copies / "db.py").exists()
    assert (copies / "kinds.py").exists()
    assert (copies / "engine.py").read_text() == mutated
    assert not stats.exists()

    # Nothing plain left: the next run keeps mutmut's copies and stats. A plain copy of a module
    # mutmut has judged before (left out of the last run) is refreshed, as one never mutated.
    stats.write_text("{}")
    assert mutation_ledger.refresh(tmp_path, modules) == []
    assert stats.exists()
    (copies / "db.py").write_text("def tool():\n    return 1\n")
    _meta(tmp_path, DB, {f"{KEY}x_tool__mutmut_1": 1}, {"x_tool": "aaa"})
    assert mutation_ledger.refresh(tmp_path, modules) == [DB]


def test_mutants_no_test_reached_are_judged_again_with_stats_taken_after_a_change(
    tmp_path: Path,
) -> None:
    """mutmut keeps "no tests" (33) like a verdict and collects stats for new tests only: a
    function added to a module it has stats for would stay unjudged for good."""
    source = tmp_path / "src" / DB
    source.parent.mkdir(parents=True)
    source.write_text("def tool():\n    return 1\n")
    stats = tmp_path / "mutants" / "mutmut-stats.json"
    stats.parent.mkdir(parents=True)
    stats.write_text("{}")
    os.utime(source, (1_000, 1_000))  # older than the stats
    codes: dict[str, int | None] = {
        f"{KEY}x_tool__mutmut_1": 1,
        f"{KEY}x_new__mutmut_1": mutation_ledger.NO_TESTS,
    }
    meta = _meta(tmp_path, DB, codes, {"x_tool": "aaa", "x_new": "bbb"})

    assert mutation_ledger.rejudge_unreached(tmp_path, [DB], TESTS) == []
    assert stats.exists()  # nothing changed since: the stats stand
    assert json.loads(meta.read_text())["exit_code_by_key"] == {f"{KEY}x_tool__mutmut_1": 1}

    os.utime(source, (stats.stat().st_mtime + 10,) * 2)  # edited after the stats were taken
    assert mutation_ledger.rejudge_unreached(tmp_path, [DB, "shipyard/backup/gone.py"], TESTS) == [
        DB
    ]
    assert not stats.exists()

    # A test of the run or a helper of the tests edited after the stats (it may reach more
    # now) has them taken anew too; another test, never.
    os.utime(source, (1_000, 1_000))
    (tmp_path / "tests").mkdir()
    for name in (*TESTS, "tests/test_other.py", "tests/helpers.py"):
        (tmp_path / name).write_text("def test_tool() -> None: ...\n")
        os.utime(tmp_path / name, (1_000, 1_000))
    for edited, retaken in (
        ("tests/test_other.py", []),
        ("tests/test_db.py", ["tests/test_db.py"]),
        ("tests/helpers.py", ["tests/helpers.py"]),
    ):
        stats.write_text("{}")
        os.utime(tmp_path / edited, (stats.stat().st_mtime + 10,) * 2)
        assert mutation_ledger.rejudge_unreached(tmp_path, [DB], TESTS) == retaken
        assert stats.exists() == (not retaken)
        os.utime(tmp_path / edited, (1_000, 1_000))

    # The ledger keeps "no tests" as mutmut said it, and never seeds it back as a verdict.
    os.utime(source, (1_000, 1_000))  # the run that wrote the .meta came after the edit
    _meta(tmp_path, DB, codes, {"x_tool": "aaa", "x_new": "bbb"})
    ledger = tmp_path / "ledger.json"
    mutation_ledger.save(tmp_path, ledger)
    assert json.loads(ledger.read_text())[DB]["x_new"]["codes"] == [mutation_ledger.NO_TESTS]
    fresh = tmp_path / "fresh"
    assert mutation_ledger.seed(fresh, ledger, [DB]) == 1
    seeded = json.loads((fresh / "mutants" / "src" / f"{DB}.meta").read_text())
    assert seeded["exit_code_by_key"] == {f"{KEY}x_tool__mutmut_1": 1}
