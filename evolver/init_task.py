"""`evolver init --pytest REPO --target FILE`: a task for an existing repository with a pytest suite.

The task folder it writes (default `runs/<name>-task`) holds copies, so that evolving never touches the
repository: `seed/` (the repository's files without its tests; the target is the one mutable file), `tests/`
(the repository's tests, part of the task so candidates cannot edit them), `instances.toml` (every collected
test, as train and as val) and `task.toml` (`kind = "pytest"`). Each test is an instance: passing is the score;
the duration of the benchmark-style tests (names containing `--bench`, default "bench") is the objective that
makes a faster candidate better, kept by the task's objective frontier.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

from .errors import UserInputError
from .task import load_task

SKIPPED_DIRS = {".git", ".hg", ".svn", ".venv", "venv", "env", "__pycache__", ".pytest_cache", ".ruff_cache",
                ".mypy_cache", ".tox", ".nox", "node_modules", "build", "dist", "runs", ".eggs"}
MAX_SEED_BYTES = 50 * 1024 * 1024  # a seed is committed for every run: source code, not data sets
COLLECT_TIMEOUT_S = 120


@dataclass(frozen=True)
class InitResult:
    task_dir: Path
    name: str
    target: str  # path of the mutable file inside the seed
    tests: tuple[str, ...]
    benchmarks: tuple[str, ...]
    seed_files: int


def _inside(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def _copy_tree(src: Path, dst: Path, skip: set[Path]) -> tuple[int, int]:
    """Copy the files under src (no caches, virtualenvs, VCS folders or `skip`); returns (files, bytes)."""
    files = size = 0
    for dirpath, dirnames, filenames in os.walk(src):
        here = Path(dirpath)
        dirnames[:] = sorted(d for d in dirnames if d not in SKIPPED_DIRS and not d.endswith(".egg-info")
                             and (here / d).resolve() not in skip)
        for name in sorted(filenames):
            source = here / name
            if source.is_symlink() or not source.is_file() or name.endswith((".pyc", ".pyo")):
                continue
            size += source.stat().st_size
            if size > MAX_SEED_BYTES:
                raise UserInputError(f"{src}: expected source files of at most {MAX_SEED_BYTES // 2**20} MB in "
                                     "all (they are committed for every candidate), found more; move data "
                                     "files out of the repository or point --pytest at the package folder")
            target = dst / source.relative_to(src)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
            files += 1
    return files, size


def collect_tests(tests_dir: Path, seed_dir: Path) -> list[str]:
    """Test ids as evolver's pytest mode names them (relative to the tests folder), collected in a separate
    Python process with the seed first on its path, as in the sandbox."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(seed_dir)
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    cmd = [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", "-o", "addopts=",
           f"--rootdir={tests_dir}", str(tests_dir)]
    try:
        proc = subprocess.run(cmd, cwd=tests_dir, env=env, capture_output=True, text=True,
                              timeout=COLLECT_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired:
        raise UserInputError(f"{tests_dir}: collecting the tests took over {COLLECT_TIMEOUT_S} s; expected a "
                             "pytest suite that collects quickly") from None
    ids = [line.strip() for line in proc.stdout.splitlines() if "::" in line and not line.startswith(" ")]
    if proc.returncode != 0 or not ids:
        tail = (proc.stdout + proc.stderr).strip()[-1500:]
        raise UserInputError(f"{tests_dir}: expected pytest to collect the tests with the repository's files "
                             f"importable, found exit code {proc.returncode} and {len(ids)} tests:\n{tail}\n"
                             "Check that the tests import the code the way the repository root (or src/) "
                             "makes importable")
    return ids


def _toml_list(items: list[str] | tuple[str, ...]) -> str:
    return "[\n" + "".join(f"    {json.dumps(i)},\n" for i in items) + "]"


def task_toml(name: str, target: str, benchmarks: tuple[str, ...], timeout_s: float) -> str:
    bench_text = (", ".join(b.split("::")[-1] for b in benchmarks[:5]) if benchmarks
                  else "none found: every test's duration counts")
    objective = (f"Make the code in {target} faster - the duration of the benchmark tests ({bench_text}) - "
                 "while every test keeps passing.")
    background = ("Each test of the repository's pytest suite is an instance; a candidate scores 1 on a test it "
                  "passes, 0 otherwise, and duration_s is the test's run time. Keep the public behaviour and "
                  "signatures exactly: the tests are the specification. Prefer better algorithms and data "
                  "structures over micro-tuning; the profile shows where the time goes.")
    return textwrap.dedent(f"""\
        # Written by `evolver init --pytest`: a copy of the repository's files (seed/) and tests (tests/).
        # Evolving never touches the repository; bring a result back with `evolver export RUN --patch FILE`.
        [task]
        name = {json.dumps(name)}
        seed = "seed"
        mutable = [{json.dumps(target)}]
        objective = {json.dumps(objective)}
        background = {json.dumps(background)}

        [evaluate]
        kind = "pytest"
        tests = "tests"
        instances = "instances.toml"
        timeout_s = {timeout_s:g}
        profile = true

        [objectives]
        score = "max"
        duration_s = "min"

        [evolve]
        # Passing every test ties; the objective frontier keeps the fastest passing candidates as parents.
        frontier = "objective"
        accept = "ties"

        [sandbox]
        backend = "auto"
        """)


def init_pytest_task(repo: str | Path, target: str, *, out: str | Path | None = None, name: str | None = None,
                     tests: str = "tests", bench: str = "bench", timeout_s: float = 60.0,
                     force: bool = False) -> InitResult:
    root = Path(repo).resolve()
    if not root.is_dir():
        raise UserInputError(f"--pytest: expected a repository folder, found {repo!r} "
                             f"({'not a folder' if root.exists() else 'no such path'})")
    target_path = (root / target).resolve() if not Path(target).is_absolute() else Path(target).resolve()
    if not _inside(target_path, root) or not target_path.is_file() or target_path.suffix != ".py":
        raise UserInputError(f"--target: expected a .py file inside {root}, found {target!r}"
                             + ("" if target_path.exists() else " (no such file)"))
    tests_src = (root / tests).resolve()
    if not tests_src.is_dir():
        raise UserInputError(f"--tests: expected the repository's pytest folder {tests_src}, found no such folder; "
                             "pass --tests DIR (relative to the repository)")
    if _inside(target_path, tests_src):
        raise UserInputError(f"--target: expected code under test, found a file in the tests folder ({target})")
    name = name or root.name
    if not name.replace("-", "").replace("_", "").replace(".", "").isalnum():
        raise UserInputError(f"--name: expected letters, digits, '-', '_' or '.', found {name!r}")
    task_dir = Path(out).resolve() if out is not None else (Path("runs") / f"{name}-task").resolve()
    if _inside(root, task_dir) or _inside(task_dir, tests_src):
        raise UserInputError(f"--out: expected a new folder, not the repository, its tests or a folder holding "
                             f"them, found {task_dir}")
    if task_dir.exists():
        if not force:
            raise UserInputError(f"--out: {task_dir} exists; pass --force to replace it, or choose another --out")
        if any(task_dir.iterdir()) and not (task_dir / "task.toml").is_file():
            raise UserInputError(f"--force: {task_dir} is not a task folder (no task.toml); refusing to replace it")
        shutil.rmtree(task_dir)

    # src layout: the package lives in src/, which is what the tests import from.
    seed_root = root / "src" if _inside(target_path, root / "src") else root
    task_dir.mkdir(parents=True)
    try:
        seed_dir = task_dir / "seed"
        files, _ = _copy_tree(seed_root, seed_dir, {tests_src, task_dir})
        shutil.copytree(tests_src, task_dir / "tests", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        ids = collect_tests(task_dir / "tests", seed_dir)
        benchmarks = tuple(i for i in ids if bench.lower() in i.lower())
        (task_dir / "instances.toml").write_text(
            "# Every collected test, in both splits: a repository's own suite is what the code must pass.\n"
            f"train = {_toml_list(ids)}\nval = {_toml_list(ids)}\n", encoding="utf-8")
        target_rel = target_path.relative_to(seed_root).as_posix()
        (task_dir / "task.toml").write_text(task_toml(name, target_rel, benchmarks, timeout_s), encoding="utf-8")
        load_task(task_dir)  # what evolver will read must load
    except BaseException:
        shutil.rmtree(task_dir, ignore_errors=True)
        raise
    return InitResult(task_dir=task_dir, name=name, target=target_rel, tests=tuple(ids), benchmarks=benchmarks,
                      seed_files=files)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("init", help="write a task for an existing repository (--pytest: its test suite)")
    p.add_argument("--pytest", dest="repo", required=True, metavar="REPO",
                   help="repository folder with a pytest suite")
    p.add_argument("--target", required=True, help="the file to make faster (relative to REPO)")
    p.add_argument("--out", help="task folder to write (default: runs/<name>-task)")
    p.add_argument("--name", help="task name (default: the repository folder's name)")
    p.add_argument("--tests", default="tests", help="the tests folder, relative to REPO (default: tests)")
    p.add_argument("--bench", default="bench", help="benchmark tests: ids containing this (default: bench)")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds per test (default: 60)")
    p.add_argument("--force", action="store_true", help="replace an existing task folder")
    p.add_argument("--json", action="store_true")


def dispatch(args: argparse.Namespace) -> int:
    result = init_pytest_task(args.repo, args.target, out=args.out, name=args.name, tests=args.tests,
                              bench=args.bench, timeout_s=args.timeout, force=args.force)
    if args.json:
        print(json.dumps({"task_dir": str(result.task_dir), "name": result.name, "target": result.target,
                          "tests": list(result.tests), "benchmarks": list(result.benchmarks),
                          "seed_files": result.seed_files}, indent=2))
        return 0
    print(f"wrote {result.task_dir}: {len(result.tests)} tests ({len(result.benchmarks)} benchmark), "
          f"{result.seed_files} seed files, mutable {result.target}")
    if not result.benchmarks:
        print(f"note: no test id contains {args.bench!r}: the duration of every test is the runtime objective")
    print(f"next: evolver eval {result.task_dir}    then: evolver run {result.task_dir} --model ...")
    return 0
