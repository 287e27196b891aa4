"""The lesson log (torn lines, shared logs, relevance) and the budget rules."""

from __future__ import annotations

from pathlib import Path

from evolver.engine.budget import Budget, Usage, evals_exhausted, stop_reason
from evolver.lessons import Lesson, LessonLog, relevant


def lesson(i: int, files=("a.py",), kinds=(), outcome="rejected", task="t") -> Lesson:
    return Lesson(task=task, run="r", iteration=i, parent="p", child=None, files=tuple(files),
                  failure_kinds=tuple(kinds), diagnosis=f"diagnosis {i}", change=f"change {i}", outcome=outcome,
                  reason="worse", delta=-0.1)


def test_log_survives_torn_lines_and_reads_what_others_append(tmp_path: Path) -> None:
    path = tmp_path / "lessons.jsonl"
    mine, other = LessonLog(path), LessonLog(path)
    mine.append(lesson(1))
    assert [x.iteration for x in other.load()] == [1]
    with open(path, "a") as f:
        f.write('{"task": "t", "broken\n')  # a line torn by a kill -9
    other.append(lesson(2))
    with open(path, "a") as f:
        f.write('{"task": "t", "half')  # still being written: read next time
    assert [x.iteration for x in mine.load()] == [1, 2]
    assert [x.iteration for x in mine.load(task="other")] == []


def test_relevant_prefers_same_files_and_failures_then_recency() -> None:
    lessons = [lesson(1, files=("b.py",)), lesson(2, kinds=("timeout",)), lesson(3), lesson(4, files=("b.py",))]
    chosen = relevant(lessons, files={"a.py"}, failure_kinds={"timeout"})
    assert [x.iteration for x in chosen] == [2, 3, 4, 1]
    assert len(relevant(lessons * 50, {"a.py"}, set(), limit=7)) == 7


def test_rendered_lessons_stay_within_their_budget() -> None:
    from evolver.proposers.prompts import LESSON_CHARS, LESSONS_CHARS, lessons_section

    long = [Lesson(task="t", run="r", iteration=i, parent="p", child=None, files=("a.py",), failure_kinds=(),
                   diagnosis="x" * 2000, change="y", outcome="rejected", reason="worse") for i in range(20)]
    text = lessons_section(long, "Lessons")
    assert len(text) <= LESSONS_CHARS + 50
    assert all(len(line) <= LESSON_CHARS for line in text.splitlines()[1:])
    assert lessons_section([], "Lessons") == ""


def test_old_lesson_lines_load_with_defaults_for_new_fields(tmp_path: Path) -> None:
    path = tmp_path / "lessons.jsonl"
    path.write_text('{"task": "t", "run": "r", "iteration": 1, "parent": "p", "child": null, "files": ["a.py"], '
                    '"failure_kinds": [], "diagnosis": "d", "change": "c", "outcome": "accepted", '
                    '"reason": "accepted", "delta": 0.1, "created_at": 1.0, "someday": "a field of a newer evolver"}\n')
    (old,) = LessonLog(path).load()
    assert old.proposer == "" and old.operator == "" and old.kind == "mutation" and old.delta == 0.1


def test_budget_rules() -> None:
    b = Budget(max_evals=10, max_iterations=5, target_score=0.9, patience=3)
    assert stop_reason(b, Usage()) is None
    assert evals_exhausted(b, Usage(evals=8), 3) and not evals_exhausted(b, Usage(evals=8), 2)
    for usage, kind, word in ((Usage(iterations=5), "budget", "iteration"),
                              (Usage(best_score=0.95), "target", "target"),
                              (Usage(since_improvement=3), "patience", "improvement")):
        reason = stop_reason(b, usage)
        assert reason is not None and reason.kind == kind and word in reason.message
    assert Budget.from_json(b.to_json()) == b
