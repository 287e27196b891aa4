"""The lesson log: what each proposal diagnosed, what it changed, and how that turned out.

One JSON object per line in `lessons.jsonl` (shareable across runs of a task with `--lessons FILE`). The
reflector gets the lessons that matter most for the candidate at hand: same files, same failure kinds,
recent first, under a size budget. A line torn by a kill -9 is skipped, never fatal.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Lesson:
    task: str
    run: str
    iteration: int
    parent: str
    child: str | None
    files: tuple[str, ...]
    failure_kinds: tuple[str, ...]
    diagnosis: str
    change: str
    outcome: str  # accepted | rejected | failed
    reason: str  # accepted | worse | noop | patch_failed | syntax | crashed | llm_error ...
    delta: float | None = None  # child minus the sum it had to beat, on the instances it was judged on
    created_at: float = field(default_factory=time.time)
    kind: str = "mutation"  # mutation | merge
    proposer: str = ""  # the registered proposer that made it ("" in lessons written before it was recorded)
    operator: str = ""  # the proposer's own label for the kind of change (the builtin's mutation kinds)
    candidate: str = ""  # the child's label (c7), "" when none was committed
    parent_label: str = ""  # the (first) parent's label
    judged_on: str = ""  # what `delta` sums over: "minibatch" (train instances) or "subsample" (validation)
    deltas: dict[str, float] = field(default_factory=dict)  # per judged instance: child minus parent
    diff: str = ""  # the change as a short unified diff of the mutable files
    proposal_id: int | None = None  # the proposal it is the lesson of (None in lessons written before it was kept)


class LessonLog:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        # Parsed lessons and how far into the file they go: each load parses only what was appended since
        # (by this run or by another sharing the log), not the whole file every iteration.
        self._parsed: list[Lesson] = []
        self._offset = 0

    def append(self, lesson: Lesson) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        data = json.dumps(asdict(lesson), ensure_ascii=False) + "\n"
        with self._lock, open(self.path, "a", encoding="utf-8") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())

    def load(self, task: str | None = None) -> list[Lesson]:
        with self._lock:
            self._read_new()
            lessons = list(self._parsed)
        return [x for x in lessons if task is None or x.task == task]

    def _read_new(self) -> None:
        try:
            size = self.path.stat().st_size
        except FileNotFoundError:
            return
        if size < self._offset:  # replaced or truncated: start over
            self._parsed, self._offset = [], 0
        if size == self._offset:
            return
        with open(self.path, "rb") as f:
            f.seek(self._offset)
            data = f.read()
        end = data.rfind(b"\n") + 1  # a line still being written is read next time
        for raw in data[:end].decode("utf-8", errors="replace").splitlines():
            try:
                d = json.loads(raw)
                known = {k: v for k, v in d.items() if k in Lesson.__dataclass_fields__}
                self._parsed.append(Lesson(**{**known, "files": tuple(d["files"]),
                                              "failure_kinds": tuple(d["failure_kinds"])}))
            except (ValueError, TypeError, KeyError):
                continue  # a torn or foreign line
        self._offset += end


def relevant(lessons: Sequence[Lesson], files: Iterable[str], failure_kinds: Iterable[str],
             limit: int = 12) -> tuple[Lesson, ...]:
    """The lessons that matter most for a parent touching `files` and failing with `failure_kinds`: sharing
    files and failure kinds ranks first, recency breaks ties and favours the newest."""
    files, kinds = set(files), set(failure_kinds)
    n = len(lessons)

    def rank(item: tuple[int, Lesson]) -> float:
        i, lesson = item
        shared = 2 * len(files & set(lesson.files)) + 2 * len(kinds & set(lesson.failure_kinds))
        return shared + (i + 1) / max(n, 1)

    return tuple(lesson for _, lesson in sorted(enumerate(lessons), key=rank, reverse=True)[:limit])
