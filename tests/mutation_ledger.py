"""mutmut's verdicts kept in the repository (docs/mutation-ledger.json), so that `nox -s
mutation` on a fresh machine, whose build/ is empty, goes on where the last run stopped: the
whole run takes hours, more than one session on one machine.

mutmut keeps its verdicts in a `.meta` file beside each mutated copy of a module (its mutants'
exit codes and a hash of each function's source). When it writes that copy anew, it keeps the
exit codes of every function whose hash has not changed and judges the others again. `seed`
writes those files from the ledger before a run, where none exist; `save` puts every verdict
of the work folder into the ledger after it.

The ledger holds, per module and function, the function's hash and its mutants' exit codes in
order of their number (1 killed, 0 survived, other codes as mutmut gives them; null: not
judged). A verdict outlives a change to the tests, as in a resumed mutmut run: a new test can
only kill more, so a survivor kept from before is judged again with `-- MODULE NAME`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

MARK = "__mutmut_"
# mutmut's code for a mutant no test reached (by its stats): no verdict on the mutant. mutmut
# keeps it like one and never runs it again, though stats taken anew may find its tests.
NO_TESTS = 33


def _dotted(module: str) -> str:
    """shipyard/backup/db.py -> shipyard.backup.db: the prefix of its mutants' names."""
    return module.removesuffix(".py").replace("/", ".")


def _meta_files(work: Path) -> dict[str, Path]:
    """Each module of the work folder's mutated copy, by its path under src/, and its `.meta`."""
    src = work / "mutants" / "src"
    return {
        meta.relative_to(src).as_posix().removesuffix(".meta"): meta
        for meta in sorted(src.rglob("*.py.meta"))
    }


def load(ledger: Path) -> dict[str, dict[str, dict[str, Any]]]:
    return json.loads(ledger.read_text(encoding="utf-8")) if ledger.is_file() else {}


def seed(work: Path, ledger: Path, modules: list[str]) -> int:
    """Write the `.meta` of each of `modules` (paths under src/) that the work folder lacks,
    from the ledger; the number of verdicts written."""
    kept = load(ledger)
    written = 0
    for module in modules:
        meta = work / "mutants" / "src" / f"{module}.meta"
        if meta.exists() or module not in kept:
            continue
        functions = kept[module]
        codes = {
            f"{_dotted(module)}.{name}{MARK}{number}": code
            for name, entry in functions.items()
            for number, code in enumerate(entry["codes"], start=1)
            if code not in (None, NO_TESTS)
        }
        meta.parent.mkdir(parents=True, exist_ok=True)
        meta.write_text(
            json.dumps(
                {
                    "exit_code_by_key": codes,
                    "hash_by_function_name": {n: e["hash"] for n, e in functions.items()},
                    "type_check_error_by_key": {},
                    "durations_by_key": {},
                    "estimated_durations_by_key": {},
                }
            )
        )
        written += len(codes)
    return written


def refresh(work: Path, modules: list[str]) -> list[str]:
    """Make mutmut mutate each of `modules` (paths under src/) whose copy in the work folder is
    plain, as an earlier run that left the module out wrote it; the modules refreshed.

    mutmut writes a module's copy anew only when its source is newer than the copy, which a
    plain copy never is, so the module would go unmutated. And it finds which tests reach a
    function only in a full stats run (no stats yet) or for tests it has not seen: the functions
    of a module mutated for the first time would each count as reached by no test. So the plain
    copies go, and with them the stats, which mutmut then collects again in full.
    """
    src = work / "mutants" / "src"
    plain = [m for m in modules if _plain(src / m)]
    for module in plain:
        (src / module).unlink()
    if plain:
        (work / "mutants" / "mutmut-stats.json").unlink(missing_ok=True)
    return plain


def rejudge_unreached(work: Path, modules: list[str], tests: list[str]) -> list[str]:
    """Make mutmut judge again the mutants of `modules` that no test reached, with its stats
    taken anew when one of the modules, of the run's `tests` or of the tests' helpers changed
    since they were taken (mutmut collects stats for new tests only: a function added to a
    module would count as reached by none, and a test that now reaches more would never be run
    against it); the files newer than the stats."""
    stats = work / "mutants" / "mutmut-stats.json"
    helpers = [p for p in (work / "tests").rglob("*.py") if not p.name.startswith("test_")]
    files = [work / "src" / m for m in modules] + [work / t for t in tests] + sorted(helpers)
    changed = [
        f.relative_to(work / "src").as_posix()
        if f.is_relative_to(work / "src")
        else f.relative_to(work).as_posix()
        for f in files
        if stats.exists() and f.exists() and f.stat().st_mtime > stats.stat().st_mtime
    ]
    if changed:
        stats.unlink()
    for module in modules:
        meta = work / "mutants" / "src" / f"{module}.meta"
        if not meta.is_file():
            continue
        data = json.loads(meta.read_text())
        codes = data["exit_code_by_key"]
        if NO_TESTS in codes.values():
            data["exit_code_by_key"] = {k: c for k, c in codes.items() if c != NO_TESTS}
            meta.write_text(json.dumps(data))
    return changed


def _plain(copy: Path) -> bool:
    """A copy mutmut did not mutate, of a module it has mutants for: a module with nothing to
    mutate (re-exports, constants) stays plain whatever mutmut does, and its `.meta` says so
    with no mutants."""
    if not copy.is_file() or MARK in copy.read_text("utf-8"):
        return False
    meta = copy.with_name(copy.name + ".meta")
    return not meta.is_file() or bool(json.loads(meta.read_text())["exit_code_by_key"])


def save(work: Path, ledger: Path) -> int:
    """Put the verdicts of every module the work folder holds into the ledger, function by
    function: a function whose hash changed takes the folder's verdicts, one whose hash did not
    keeps every verdict either side has. The number of verdicts the ledger then holds."""
    kept = load(ledger)
    for module, meta in _meta_files(work).items():
        source = work / "src" / module
        if source.exists() and meta.stat().st_mtime < source.stat().st_mtime:
            continue  # written before the source last changed: a run that never got going
        data = json.loads(meta.read_text())
        prefix = _dotted(module) + "."
        by_function: dict[str, dict[int, int | None]] = {}
        for key, code in data["exit_code_by_key"].items():
            name, _, number = key.removeprefix(prefix).rpartition(MARK)
            by_function.setdefault(name, {})[int(number)] = code
        before = kept.get(module, {})
        merged: dict[str, dict[str, Any]] = {}
        for name, digest in sorted(data["hash_by_function_name"].items()):
            mine = by_function.get(name, {})
            old = before.get(name)
            # The same code: a verdict this folder lacks (a stale or partial build/) stays.
            same = old is not None and old["hash"] == digest
            theirs = dict(enumerate(old["codes"], start=1)) if old is not None and same else {}
            numbers = set(mine) | set(theirs)
            if numbers:
                codes = [
                    mine[n] if mine.get(n) is not None else theirs.get(n)
                    for n in range(1, max(numbers) + 1)
                ]
                merged[name] = {"hash": digest, "codes": codes}
        # mutmut hashes every function of the file: one it does not list was deleted or renamed.
        kept[module] = merged
    # One function to a line: a run changes the lines of the functions it judged.
    lines = [
        f"  {json.dumps(module)}: {{\n"
        + ",\n".join(
            f"    {json.dumps(name, ensure_ascii=False)}: {json.dumps(entry)}"
            for name, entry in functions.items()
        )
        + "\n  }"
        for module, functions in sorted(kept.items())
    ]
    ledger.write_text("{\n" + ",\n".join(lines) + "\n}\n", encoding="utf-8")
    return sum(
        code is not None
        for functions in kept.values()
        for entry in functions.values()
        for code in entry["codes"]
    )
