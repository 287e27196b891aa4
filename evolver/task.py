"""task.toml: loading and validation with one-line errors naming file, key, expectation and finding.

Every field and its default (README "task.toml reference" documents the same):

[task]      name = <folder name>; seed = "seed"; mutable = ["**/*.py"]; objective = ""; background = ""
[evaluate]  kind = "python" | "pytest" ("python"); evaluator = "evaluate.py"; tests = "tests";
            instances = "instances.toml" (optional for pytest: collected); timeout_s = 60; profile = false;
            repeats = 1; private = [] (globs of task files only the trusted harness may read)
[objectives] name = "max" | "min" ...; default { score = "max" }; "score" is added first when missing
[evolve]    frontier = "instance" | "objective" | "hybrid" ("instance"); minibatch = 3; accept = "strict" | "ties";
            merge = true; max_merges = 5
[sandbox]   backend = "auto" | "docker" | "process" ("auto"); memory_mb = 1024; cpus = 1.0;
            max_processes = 64; output_limit_mb = 64; workers = 0 (auto);
            isolation = "pool" | "strict" ("pool"); recycle_after = 50 (docker: evaluations per container)
"""

from __future__ import annotations

import hashlib
import re
import tomllib
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import Any

from .errors import TaskError

SPLITS = ("train", "val", "test")
TASK_FILE = "task.toml"
_IGNORED_PARTS = {"__pycache__", ".git", ".pytest_cache", ".ruff_cache", ".mypy_cache"}

_SCHEMA: dict[str, dict[str, Any]] = {
    "task": {"name": None, "seed": "seed", "mutable": ["**/*.py"], "objective": "", "background": ""},
    "evaluate": {"kind": "python", "evaluator": "evaluate.py", "tests": "tests", "instances": None,
                 "timeout_s": 60.0, "profile": False, "repeats": 1, "private": []},
    "evolve": {"frontier": "instance", "minibatch": 3, "accept": "strict", "merge": True, "max_merges": 5},
    "sandbox": {"backend": "auto", "memory_mb": 1024, "cpus": 1.0, "max_processes": 64,
                "output_limit_mb": 64, "workers": 0, "isolation": "pool", "recycle_after": 50},
}


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


def _isolation(r: Any, file: str) -> str:
    isolation = r.get("sandbox", "isolation", str, '"pool" or "strict"')
    if isolation not in ("pool", "strict"):
        raise TaskError(file, "[sandbox] isolation", '"pool" or "strict"', repr(isolation))
    return isolation


@dataclass(frozen=True)
class SandboxConfig:
    backend: str = "auto"
    memory_mb: int = 1024
    cpus: float = 1.0
    max_processes: int = 64
    output_limit_mb: int = 64
    workers: int = 0
    isolation: str = "pool"  # docker: warm pool with a fork-server, or "strict": one container per evaluation
    recycle_after: int = 50


@dataclass(frozen=True)
class EvolveConfig:
    """Defaults of `evolver run` for this task (its flags override them)."""

    frontier: str = "instance"  # instance | objective | hybrid
    minibatch: int = 3
    accept: str = "strict"  # strict | ties
    merge: bool = True  # merge two frontier candidates now and then
    max_merges: int = 5  # merge attempts over a run


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
    objectives: dict[str, str] = field(default_factory=dict)
    sandbox: SandboxConfig = field(default_factory=SandboxConfig)
    evolve: EvolveConfig = field(default_factory=EvolveConfig)
    digest: str = ""
    private: tuple[str, ...] = ()  # task files the untrusted child may not read (answers, future data)

    def is_mutable(self, rel_path: str) -> bool:
        """Whether the proposer may edit this candidate file (path relative to the candidate root)."""
        return any(glob_match(rel_path, g) for g in self.mutable)

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
            raise TaskError(file, key, "only the keys train, val, test", f"unknown key {key!r}")
    splits: dict[str, tuple[str, ...]] = {}
    for s in SPLITS:
        ids = data.get(s, [])
        if not isinstance(ids, list) or not all(isinstance(i, str) and i for i in ids):
            raise TaskError(file, s, "a list of non-empty instance id strings", _found(ids))
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        if dupes:
            raise TaskError(file, s, "each instance id once", f"duplicates {dupes[:5]}")
        splits[s] = tuple(ids)
    if not any(splits.values()):
        raise TaskError(file, "train/val/test", "at least one instance id", "no instances")
    return Instances(**splits)


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
    objective = r.get("task", "objective", str, "a string")
    background = r.get("task", "background", str, "a string")

    kind = r.get("evaluate", "kind", str, '"python" or "pytest"')
    if kind not in ("python", "pytest"):
        raise TaskError(file, "[evaluate] kind", '"python" or "pytest"', repr(kind))
    evaluator = r.get("evaluate", "evaluator", str, "a file name")
    tests = r.get("evaluate", "tests", str, "a folder name")
    if kind == "python":
        _relative_path(r, root, "evaluate", "evaluator", evaluator, False)
    else:
        _relative_path(r, root, "evaluate", "tests", tests, True)
    instances_name = r.get("evaluate", "instances", (str, type(None)), "a file name")
    instances: Instances | None = None
    if instances_name is None and kind == "python":
        instances_name = "instances.toml"
    if instances_name is not None:
        ipath = _relative_path(r, root, "evaluate", "instances", instances_name, False)
        instances = load_instances(ipath)
    timeout_s = float(_positive(r, "evaluate", "timeout_s", (int, float), 0.01))
    profile = r.get("evaluate", "profile", bool, "true or false")
    repeats = int(_positive(r, "evaluate", "repeats", int, 1))
    private = r.get("evaluate", "private", list, "a list of glob strings")
    if not all(isinstance(g, str) and g for g in private):
        raise TaskError(file, "[evaluate] private", "a list of glob strings", _found(private))

    raw_obj = r.table("objectives") if "objectives" in data else {"score": "max"}
    objectives: dict[str, str] = {}
    for oname, direction in raw_obj.items():
        if not oname.isidentifier():
            raise TaskError(file, f"[objectives] {oname}", "an identifier-like objective name", repr(oname))
        if direction not in ("max", "min"):
            raise TaskError(file, f"[objectives] {oname}", '"max" or "min"', _found(direction))
        objectives[oname] = direction
    if "score" not in objectives:
        objectives = {"score": "max", **objectives}

    backend = r.get("sandbox", "backend", str, '"auto", "docker" or "process"')
    if backend not in ("auto", "docker", "process"):
        raise TaskError(file, "[sandbox] backend", '"auto", "docker" or "process"', repr(backend))
    sandbox = SandboxConfig(
        backend=backend,
        memory_mb=int(_positive(r, "sandbox", "memory_mb", int, 64)),
        cpus=float(_positive(r, "sandbox", "cpus", (int, float), 0.1)),
        max_processes=int(_positive(r, "sandbox", "max_processes", int, 1)),
        output_limit_mb=int(_positive(r, "sandbox", "output_limit_mb", int, 1)),
        workers=int(_positive(r, "sandbox", "workers", int, 0)),
        isolation=_isolation(r, file),
        recycle_after=int(_positive(r, "sandbox", "recycle_after", int, 1)),
    )
    frontier = r.get("evolve", "frontier", str, '"instance", "objective" or "hybrid"')
    if frontier not in ("instance", "objective", "hybrid"):
        raise TaskError(file, "[evolve] frontier", '"instance", "objective" or "hybrid"', repr(frontier))
    accept = r.get("evolve", "accept", str, '"strict" or "ties"')
    if accept not in ("strict", "ties"):
        raise TaskError(file, "[evolve] accept", '"strict" or "ties"', repr(accept))
    evolve = EvolveConfig(frontier=frontier, minibatch=int(_positive(r, "evolve", "minibatch", int, 1)),
                          accept=accept, merge=r.get("evolve", "merge", bool, "true or false"),
                          max_merges=int(_positive(r, "evolve", "max_merges", int, 0)))
    task = Task(
        root=root.resolve(), name=name, seed_dir=seed_dir, mutable=tuple(mutable), objective=objective,
        background=background, kind=kind, evaluator=evaluator, tests=tests, instances=instances,
        timeout_s=timeout_s, profile=profile, repeats=repeats, objectives=objectives, sandbox=sandbox,
        private=tuple(private),
        evolve=evolve,
    )
    files = _task_files(task.root, seed_dir)
    digest = digest_files(task.root, files, extra=f"{kind}|{evaluator}|{tests}|{timeout_s}|{profile}|"
                                                  f"{sandbox.memory_mb}|{sandbox.max_processes}")
    return replace(task, digest=digest)


