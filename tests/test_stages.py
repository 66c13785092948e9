"""The cache every stage runner shares (``mor_secure.cache``) and the benchmarks' task runner
(``benchmarks.stages``): a result is reused only under the same stamp; inputs reach the tasks that wait on them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.stages import Task, cached_results, run_tasks
from mor_secure.cache import read_cached, write_cached


def test_a_result_reads_back_only_under_its_stamp(tmp_path: Path) -> None:
    path = tmp_path / "cell" / "result.json"
    assert read_cached(path, {"pairs": 10}) is None  # nothing written yet
    write_cached(path, {"pairs": 10, "epsilons": (1.0, 4.0)}, {"accuracy": 0.9})
    assert read_cached(path, {"pairs": 10, "epsilons": [1.0, 4.0]}) == {"accuracy": 0.9}  # tuples compare as lists
    assert read_cached(path, {"pairs": 11, "epsilons": (1.0, 4.0)}) is None  # a changed setting recomputes
    assert not list(path.parent.glob("*.partial"))
    path.write_text("{half a file", encoding="utf-8")
    assert read_cached(path, {"pairs": 10}) is None
    path.write_text(json.dumps({"stamp": {"pairs": 10}, "result": [1, 2]}), encoding="utf-8")
    assert read_cached(path, {"pairs": 10}) is None  # not a result object


def add(*numbers: object) -> dict[str, object]:
    """A task: the sum of its arguments and of the ``value`` of each input's result."""
    total = sum(n["value"] if isinstance(n, dict) else n for n in numbers)
    return {"value": total}


def test_tasks_run_after_their_inputs_and_are_read_from_the_cache_next_time(tmp_path: Path, capfd) -> None:
    def plan(stamp: dict[str, int]) -> dict[str, Task]:
        return {
            "a": Task(tmp_path / "a.json", add, (1, 2), stamp),
            "b": Task(tmp_path / "b.json", add, (10,), stamp, inputs=("a",)),
            "c": Task(tmp_path / "c.json", add, (100,), stamp, inputs=("b",), after=("a",)),
        }

    done = run_tasks(plan({"v": 1}), jobs=2)
    assert {name: r["value"] for name, r in done.items()} == {"a": 3, "b": 13, "c": 113}
    assert all(r["stage_seconds"] >= 0 for r in done.values())
    assert set(cached_results(plan({"v": 1}))) == {"a", "b", "c"}
    assert cached_results(plan({"v": 2})) == {}  # another stamp: nothing reused
    capfd.readouterr()
    again = run_tasks(plan({"v": 1}), jobs=2)
    assert again == done and capfd.readouterr().out.count("cached:") == 3


def test_a_task_waiting_for_an_unplanned_stage_is_refused(tmp_path: Path) -> None:
    tasks = {"b": Task(tmp_path / "b.json", add, (1,), {}, inputs=("a",))}
    with pytest.raises(ValueError, match=r"not planned: \['a'\]"):
        run_tasks(tasks, jobs=1)
