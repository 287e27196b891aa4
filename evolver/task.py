"""task.toml: loading and validation with one-line errors naming file, key, expectation and finding.

Every field and its default (README "task.toml reference" documents the same; the defaults and allowed values
themselves live in evolver.config, task kinds and sandbox backends in the registries of evolver.registry):

[task]      name = <folder name>; seed = "seed"; mutable = ["**/*.py"]; objective = ""; background = ""
[evaluate]  kind = "python" | "pytest" | a registered kind ("python"); evaluator = "evaluate.py"; tests = "tests";
            instances = "instances.toml" (optional for pytest: collected); timeout_s = 60; profile = false;
            repeats = 1; private = [] (globs of task files only the trusted harness may read)
[objectives] name = "max" | "min" | { direction, role = "optimize" | "gate" | "report", tolerance, at_least,
            at_most } ...; default { score = "max" }; "score" is added first when missing (evolver.objectives)
[evolve]    frontier = "instance" | "objective" | "hybrid" ("instance"); minibatch = 3;
            accept = "strict" | "ties" | "pareto" (pareto when several objectives are optimized, else strict);
            race = true; race_confidence = 0.95; always_in_minibatch = [] (train ids in every minibatch);
            prompts = <folder of prompt templates> (none: the shipped ones);
            merge = true; max_merges = 5
[sandbox]   backend = "auto" | "docker" | "process" | a registered backend ("auto"); memory_mb = 1024; cpus = 1.0;
            max_processes = 64; output_limit_mb = 64; workers = 0 (auto);
            isolation = "pool" | "strict" ("pool"); recycle_after = 50 (docker: evaluations per container)
"""

from __future__ import annotations

import hashlib
import os
import re
import tomllib
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import Any

from .config import (
    ACCEPT_RULES,
    AUTO_BACKEND,
    FRONTIER_MODES,
    HARNESS_MODES,
    ISOLATIONS,
    SINGLE_TASK_ID,
    SPLITS,
    Defaults,
    one_of,
)
from .errors import TaskError
from .objectives import Objective, accept_rule_for, directions, parse_objectives
from .registry import SANDBOXES, TASK_KINDS
from .task_kinds import PYTHON, TaskKind

__all__ = ["SPLITS", "TASK_FILE", "EvolveConfig", "Instances", "SandboxConfig", "Task", "digest_files",
           "glob_match", "load_instances", "load_task", "not_utf8", "not_utf8_note", "reject_links"]

TASK_FILE = "task.toml"
_IGNORED_PARTS = {"__pycache__", ".git", ".pytest_cache", ".ruff_cache", ".mypy_cache"}
_D = Defaults
_SCHEMA: dict[str, dict[str, Any]] = {
    "task": {"name": None, "seed": _D.seed, "mutable": list(_D.mutable), "objective": _D.objective,
             "background": _D.background},
    "evaluate": {"kind": _D.kind, "evaluator": _D.evaluator, "tests": _D.tests, "instances": None,
                 "timeout_s": _D.timeout_s, "profile": _D.profile, "repeats": _D.repeats,
                 "private": list(_D.private)},
    "evolve": {"frontier": _D.frontier, "minibatch": _D.minibatch, "accept": _D.accept, "merge": _D.merge,
               "max_merges": _D.max_merges, "prompts": None, "race": _D.race, "race_confidence": _D.race_confidence,
               "always_in_minibatch": []},
    "sandbox": {"backend": _D.backend, "memory_mb": _D.memory_mb, "cpus": _D.cpus,
                "max_processes": _D.max_processes, "output_limit_mb": _D.output_limit_mb,
                "workers": _D.sandbox_workers, "isolation": _D.isolation, "recycle_after": _D.recycle_after},
}
# The [evaluate] keys naming a file or folder of the task: the ones a task kind may require.
_PATH_KEYS = ("evaluator", "tests")


@dataclass(frozen=True)
class Instances:
    train: tuple[str, ...] = ()
    val: tuple[str, ...] = ()
    test: tuple[str, ...] = ()

    def split(self, name: str) -> tuple[str, ...]:
        return getattr(self, name)

    def split_of(self) -> dict[str, str]:
        """Instance id -> the first split that lists it (train before val before test)."""
        out: dict[str, str] = {}
        for s in SPLITS:
            for i in self.split(s):
                out.setdefault(i, s)
        return out


@dataclass(frozen=True)
class SandboxConfig:
    backend: str = _D.backend  # "auto" or a name of evolver.registry.SANDBOXES
    memory_mb: int = _D.memory_mb
    cpus: float = _D.cpus
    max_processes: int = _D.max_processes
    output_limit_mb: int = _D.output_limit_mb
    workers: int = _D.sandbox_workers
    isolation: str = _D.isolation  # docker: warm pool with a fork-server, or "strict": one container per evaluation
    recycle_after: int = _D.recycle_after


@dataclass(frozen=True)
class EvolveConfig:
    """Defaults of `evolver run` for this task (its flags override them)."""

    frontier: str = _D.frontier  # one of config.FRONTIER_MODES
    minibatch: int = _D.minibatch
    accept: str | None = _D.accept  # one of config.ACCEPT_RULES; None: by the objectives (accept_rule_for)
    race: bool = _D.race  # validate accepted children in stages (engine.racing)
    race_confidence: float = _D.race_confidence
    always_in_minibatch: tuple[str, ...] = ()  # train instances every minibatch holds (a speed task's benchmarks)
    merge: bool = _D.merge  # merge two frontier candidates now and then
    max_merges: int = _D.max_merges  # merge attempts over a run
    prompts: Path | None = None  # a folder of prompt templates overriding the shipped ones (inside the task)


@dataclass(frozen=True)
class Task:
    root: Path
    name: str
    seed_dir: Path
    mutable: tuple[str, ...]
    objective: str
    background: str
    kind: str
    evaluator: str
    tests: str
    instances: Instances | None  # None: pytest tests collected at evaluation time
    timeout_s: float
    profile: bool
    repeats: int
    objective_specs: dict[str, Objective] = field(default_factory=dict)
    sandbox: SandboxConfig = field(default_factory=SandboxConfig)
    evolve: EvolveConfig = field(default_factory=EvolveConfig)
    digest: str = ""
    private: tuple[str, ...] = ()  # task files the untrusted child may not read (answers, future data)
    # Of the task's kind (evolver.task_kinds): how the harness runs an instance, and whether the scores come
    # from outside the candidate's process. Stored here so readers of a task need not look the kind up.
    harness_mode: str = PYTHON.harness_mode
    trusted_scores: bool = PYTHON.trusted_scores

    def is_mutable(self, rel_path: str) -> bool:
        """Whether the proposer may edit this candidate file (path relative to the candidate root)."""
        return any(glob_match(rel_path, g) for g in self.mutable)

    @property
    def objectives(self) -> dict[str, str]:
        """Every objective's direction, in declared order (the score first)."""
        return directions(self.objective_specs)

    @property
    def optimized(self) -> dict[str, str]:
        """The directions acceptance and the frontier use: the optimized objectives (and the score)."""
        return directions(self.objective_specs, "optimize")

    @property
    def accept_rule(self) -> str:
        return accept_rule_for(self.objective_specs, self.evolve.accept)

    @property
    def primary(self) -> str:
        return next(iter(self.objectives))

    def task_files(self) -> list[Path]:
        """Files of the task folder that the sandbox gets (everything but the seed and caches)."""
        return _task_files(self.root, self.seed_dir)

    def private_files(self) -> list[Path]:
        """The task files matching [evaluate] private."""
        return [p for p in self.task_files()
                if any(glob_match(p.relative_to(self.root).as_posix(), g) for g in self.private)]


@lru_cache(maxsize=256)
def _glob_regex(glob: str) -> re.Pattern[str]:
    out, i = [], 0
    while i < len(glob):
        if glob.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif glob.startswith("**", i):
            out.append(".*")
            i += 2
        elif glob[i] == "*":
            out.append("[^/]*")
            i += 1
        elif glob[i] == "?":
            out.append("[^/]")
            i += 1
        else:
            out.append(re.escape(glob[i]))
            i += 1
    return re.compile("".join(out) + r"\Z")


def glob_match(rel_path: str, glob: str) -> bool:
    """Match a '/'-separated relative path against a glob where '*' stays in one folder and '**' spans."""
    return _glob_regex(glob).match(rel_path) is not None


def _task_files(root: Path, seed_dir: Path) -> list[Path]:
    files = []
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root)
        if any(part in _IGNORED_PARTS for part in rel.parts) or not p.is_file():
            continue
        if p == seed_dir or seed_dir in p.parents:
            continue
        files.append(p)
    return files


def reject_links(root: Path) -> None:
    """Refuse a symbolic link anywhere in a task folder (the seed included), before anything is written.

    A link can point anywhere: committed into a candidate or shipped with the task's files, a link to
    /etc/passwd or to the user's keys would let a candidate or the task reach outside its folder."""
    for folder, dirs, files in os.walk(root):
        for name in sorted(dirs + files):
            path = Path(folder, name)
            if path.is_symlink():
                raise TaskError(str(path), "(symbolic link)", "regular files and folders only (a link could let a "
                                "candidate or the task reach outside its folder; put a copy of the file there)",
                                f"a link to {os.readlink(path)!r}")
        dirs[:] = [d for d in dirs if d not in _IGNORED_PARTS]


def _found(value: Any) -> str:
    if isinstance(value, str):
        return repr(value)
    return f"{value!r} ({type(value).__name__})"


class _Reader:
    def __init__(self, file: str, data: dict[str, Any]) -> None:
        self.file, self.data = file, data

    def table(self, name: str) -> dict[str, Any]:
        value = self.data.get(name, {})
        if not isinstance(value, dict):
            raise TaskError(self.file, f"[{name}]", "a table", _found(value))
        known = _SCHEMA.get(name)
        if known is not None:
            for key in value:
                if key not in known:
                    raise TaskError(self.file, f"[{name}] {key}", f"one of {', '.join(known)}",
                                    f"unknown key {key!r}")
        return value

    def get(self, section: str, key: str, kind: type | tuple[type, ...], expected: str) -> Any:
        table = self.table(section)
        value = table.get(key, _SCHEMA[section][key])
        ok = isinstance(value, kind) and not (isinstance(value, bool) and bool not in _as_tuple(kind))
        if not ok:
            raise TaskError(self.file, f"[{section}] {key}", expected, _found(value))
        return value


def _as_tuple(kind: type | tuple[type, ...]) -> tuple[type, ...]:
    return kind if isinstance(kind, tuple) else (kind,)


def _positive(r: _Reader, section: str, key: str, kind: type | tuple[type, ...], minimum: float) -> Any:
    value = r.get(section, key, kind, f"a number >= {minimum:g}")
    if value < minimum:
        raise TaskError(r.file, f"[{section}] {key}", f"a number >= {minimum:g}", _found(value))
    return value


def _choice(r: _Reader, section: str, key: str, allowed: tuple[str, ...] | list[str]) -> str:
    expected = one_of(tuple(allowed))
    value = r.get(section, key, str, expected)
    if value not in allowed:
        raise TaskError(r.file, f"[{section}] {key}", expected, repr(value))
    return value


def _relative_path(r: _Reader, root: Path, section: str, key: str, value: str, want_dir: bool) -> Path:
    what = "folder" if want_dir else "file"
    p = (root / value).resolve()
    if root.resolve() not in (p, *p.parents):
        raise TaskError(r.file, f"[{section}] {key}", f"a {what} inside the task folder", repr(value))
    if not (p.is_dir() if want_dir else p.is_file()):
        raise TaskError(r.file, f"[{section}] {key}", f"an existing {what} relative to the task folder",
                        f"{value!r} does not exist" if not p.exists() else f"{value!r} is not a {what}")
    return p


def load_instances(path: Path) -> Instances:
    file = str(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise TaskError(file, "(syntax)", "valid TOML", str(exc)) from None
    for key in data:
        if key not in SPLITS:
            raise TaskError(file, key, f"only the keys {', '.join(SPLITS)}", f"unknown key {key!r}")
    splits: dict[str, tuple[str, ...]] = {}
    first_split: dict[str, str] = {}  # id -> the split that lists it first: every check is one pass over the ids
    for s in SPLITS:
        ids = data.get(s, [])
        if not isinstance(ids, list) or not all(isinstance(i, str) and i for i in ids):
            raise TaskError(file, s, "a list of non-empty instance id strings", _found(ids))
        dupes = sorted(i for i, n in Counter(ids).items() if n > 1)
        if dupes:
            raise TaskError(file, s, "each instance id once", f"duplicates {_some(dupes)}")
        # An id in two splits would be learned from and then judged on: the validation score would not
        # measure generalisation, and a test score would not be held out.
        shared = [i for i in ids if i in first_split]
        if shared:
            other = first_split[shared[0]]
            raise TaskError(file, f"{other}/{s}", f"ids of {s} that are not in {other}",
                            f"{_some(sorted(i for i in shared if first_split[i] == other))} in both")
        first_split.update(dict.fromkeys(ids, s))
        splits[s] = tuple(ids)
    if not any(splits.values()):
        raise TaskError(file, "/".join(SPLITS), "at least one instance id", "no instances")
    return Instances(**splits)


def _some(ids: list[str], shown: int = 5) -> str:
    """A few ids of a long list, and how many more there are."""
    more = f" and {len(ids) - shown} more" if len(ids) > shown else ""
    return f"{ids[:shown]}{more}"


def mutable_texts(task: Task, files: Mapping[str, bytes]) -> dict[str, str]:
    """The mutable files a proposer may edit, as text: those that decode as UTF-8 (see `not_utf8`)."""
    out = {}
    for path, data in files.items():
        if task.is_mutable(path):
            try:
                out[path] = data.decode("utf-8")
            except UnicodeDecodeError:
                continue
    return out


def not_utf8(task: Task, files: Mapping[str, bytes]) -> list[str]:
    """The files matching [task] mutable that do not decode as UTF-8. No proposer is shown them or edits them
    (a text round trip would replace their bytes), so they stay in every candidate byte for byte."""
    texts = mutable_texts(task, files)
    return sorted(p for p in files if task.is_mutable(p) and p not in texts)


def not_utf8_note(paths: list[str]) -> str:
    """What a run and `evolver eval` say, once, about such files."""
    return (f"{', '.join(paths)}: not UTF-8 text, so not mutable: no proposer is shown or edits it, and every "
            "candidate keeps it byte for byte (save it as UTF-8 to let it evolve)")


def digest_files(root: Path, files: list[Path], extra: str = "") -> str:
    h = hashlib.sha256(extra.encode())
    for p in files:
        h.update(str(p.relative_to(root)).encode() + b"\0")
        h.update(hashlib.sha256(p.read_bytes()).digest())
    return h.hexdigest()


def load_task(path: str | Path) -> Task:
    """Load and validate a task folder (or its task.toml). Raises TaskError with a one-line message."""
    given = Path(path)
    root = given.parent if given.name == TASK_FILE else given
    toml_path = root / TASK_FILE
    file = str(toml_path)
    if not root.is_dir():
        raise TaskError(str(given), "(task folder)", "a task folder containing task.toml",
                        "no such folder" if not root.exists() else "not a folder")
    reject_links(root)
    if not toml_path.is_file():
        raise TaskError(file, "(file)", "a task.toml in the task folder", "no task.toml")
    try:
        data = tomllib.loads(toml_path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise TaskError(file, "(syntax)", "valid TOML", str(exc)) from None
    except UnicodeDecodeError:
        raise TaskError(file, "(encoding)", "UTF-8 text", "bytes that are not UTF-8") from None
    for section in data:
        if section not in (*_SCHEMA, "objectives"):
            raise TaskError(file, f"[{section}]", "sections task, evaluate, objectives, evolve, sandbox",
                            f"unknown section [{section}]")
    r = _Reader(file, data)
    for section in _SCHEMA:
        r.table(section)
    task = _read_task(r, root)
    task = _read_evaluate(r, task)
    task = replace(task, objective_specs=parse_objectives(r.table("objectives"), r.file), sandbox=_read_sandbox(r),
                   evolve=_read_evolve(r, root, task.instances))
    files = _task_files(task.root, task.seed_dir)
    digest = digest_files(task.root, files, extra=f"{task.kind}|{task.evaluator}|{task.tests}|{task.timeout_s}|"
                                                  f"{task.profile}|{task.sandbox.memory_mb}|"
                                                  f"{task.sandbox.max_processes}")
    return replace(task, digest=digest)


def _read_task(r: _Reader, root: Path) -> Task:
    """[task]; the [evaluate] fields get their defaults, read next by `_read_evaluate`."""
    file = r.file
    name = r.get("task", "name", (str, type(None)), "a string") or root.resolve().name
    if not name.replace("-", "").replace("_", "").replace(".", "").isalnum():
        raise TaskError(file, "[task] name", "letters, digits, '-', '_' or '.'", repr(name))
    seed_dir = _relative_path(r, root, "task", "seed", r.get("task", "seed", str, "a folder name"), True)
    mutable = r.get("task", "mutable", list, "a list of glob strings")
    if not mutable or not all(isinstance(g, str) and g for g in mutable):
        raise TaskError(file, "[task] mutable", "a non-empty list of glob strings", _found(mutable))
    seed_files = [p.relative_to(seed_dir).as_posix() for p in seed_dir.rglob("*")
                  if p.is_file() and not (_IGNORED_PARTS & set(p.relative_to(seed_dir).parts))]
    for glob in mutable:
        if not any(glob_match(rel, glob) for rel in seed_files):
            raise TaskError(file, "[task] mutable", f"globs matching files of the seed folder "
                            f"{seed_dir.name}/", f"{glob!r} matches nothing")
    return Task(root=root.resolve(), name=name, seed_dir=seed_dir, mutable=tuple(mutable),
                objective=r.get("task", "objective", str, "a string"),
                background=r.get("task", "background", str, "a string"),
                kind=_D.kind, evaluator=_D.evaluator, tests=_D.tests, instances=None, timeout_s=_D.timeout_s,
                profile=_D.profile, repeats=_D.repeats)


def _task_kind(r: _Reader, name: str) -> TaskKind:
    """The registry's kind of that name, checked: a third-party kind must fit the harness evolver ships."""
    kind = TASK_KINDS.get(name)
    key = "[evaluate] kind"
    if not isinstance(kind, TaskKind):
        raise TaskError(r.file, key, "a task kind with the attributes of evolver.task_kinds.TaskKind",
                        f"{name!r}, registered as {type(kind).__name__}")
    if kind.harness_mode not in HARNESS_MODES:
        raise TaskError(r.file, key, f"a task kind whose harness mode is {one_of(HARNESS_MODES)}",
                        f"{name!r} with harness mode {kind.harness_mode!r}")
    unknown = [k for k in (*kind.required_files, *kind.required_folders) if k not in _PATH_KEYS]
    if unknown:
        raise TaskError(r.file, key, f"a task kind requiring only the keys {', '.join(_PATH_KEYS)}",
                        f"{name!r} requiring {', '.join(unknown)}")
    return kind


def _read_evaluate(r: _Reader, task: Task) -> Task:
    root, file = task.root, r.file
    kind_name = _choice(r, "evaluate", "kind", TASK_KINDS.names())
    kind = _task_kind(r, kind_name)
    paths = {"evaluator": r.get("evaluate", "evaluator", str, "a file name"),
             "tests": r.get("evaluate", "tests", str, "a folder name")}
    for key in kind.required_files:
        _relative_path(r, root, "evaluate", key, paths[key], False)
    for key in kind.required_folders:
        _relative_path(r, root, "evaluate", key, paths[key], True)
    instances_name = r.get("evaluate", "instances", (str, type(None)), "a file name")
    single_task = False
    if instances_name is None and not kind.collects_instances:
        # No instances file at all: one problem (single-task search), its one instance named SINGLE_TASK_ID.
        single_task = not (root / _D.instances_file).is_file()
        instances_name = None if single_task else _D.instances_file
    instances: Instances | None = Instances(train=(SINGLE_TASK_ID,)) if single_task else None
    if instances_name is not None:
        instances = load_instances(_relative_path(r, root, "evaluate", "instances", instances_name, False))
    timeout_s = float(_positive(r, "evaluate", "timeout_s", (int, float), 0.01))
    profile = r.get("evaluate", "profile", bool, "true or false")
    repeats = int(_positive(r, "evaluate", "repeats", int, 1))
    private = r.get("evaluate", "private", list, "a list of glob strings")
    if not all(isinstance(g, str) and g for g in private):
        raise TaskError(file, "[evaluate] private", "a list of glob strings", _found(private))
    return replace(task, kind=kind_name, evaluator=paths["evaluator"], tests=paths["tests"], instances=instances,
                   timeout_s=timeout_s, profile=profile, repeats=repeats, private=tuple(private),
                   harness_mode=kind.harness_mode, trusted_scores=bool(kind.trusted_scores))


def _read_sandbox(r: _Reader) -> SandboxConfig:
    return SandboxConfig(
        backend=_choice(r, "sandbox", "backend", [AUTO_BACKEND, *SANDBOXES.names()]),
        memory_mb=int(_positive(r, "sandbox", "memory_mb", int, 64)),
        cpus=float(_positive(r, "sandbox", "cpus", (int, float), 0.1)),
        max_processes=int(_positive(r, "sandbox", "max_processes", int, 1)),
        output_limit_mb=int(_positive(r, "sandbox", "output_limit_mb", int, 1)),
        workers=int(_positive(r, "sandbox", "workers", int, 0)),
        isolation=_choice(r, "sandbox", "isolation", ISOLATIONS),
        recycle_after=int(_positive(r, "sandbox", "recycle_after", int, 1)),
    )


def _read_evolve(r: _Reader, root: Path, instances: Instances | None) -> EvolveConfig:
    frontier = _choice(r, "evolve", "frontier", FRONTIER_MODES)
    minibatch = int(_positive(r, "evolve", "minibatch", int, 1))
    accept = _choice(r, "evolve", "accept", ACCEPT_RULES) if r.table("evolve").get("accept") is not None else None
    confidence = r.get("evolve", "race_confidence", (int, float), "a number between 0.5 and 1")
    if not 0.5 <= confidence < 1:
        raise TaskError(r.file, "[evolve] race_confidence", "a number between 0.5 and 1 (below 1)", _found(confidence))
    prompts = r.get("evolve", "prompts", (str, type(None)), "a folder name")
    always = r.get("evolve", "always_in_minibatch", list, "a list of train instance ids")
    stray = [i for i in always if not isinstance(i, str) or (instances is not None and i not in instances.train)]
    if stray:
        raise TaskError(r.file, "[evolve] always_in_minibatch", "ids of train instances", _found(stray[0]))
    return EvolveConfig(frontier=frontier, minibatch=minibatch, accept=accept, always_in_minibatch=tuple(always),
                        race=r.get("evolve", "race", bool, "true or false"), race_confidence=float(confidence),
                        merge=r.get("evolve", "merge", bool, "true or false"),
                        max_merges=int(_positive(r, "evolve", "max_merges", int, 0)),
                        prompts=_relative_path(r, root, "evolve", "prompts", prompts, True) if prompts else None)
