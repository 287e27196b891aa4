"""`evolver init --pytest REPO --target FILE`: a task for an existing repository with a pytest suite.

The task folder it writes (default `runs/<name>-task`) holds copies, so that evolving never touches the
repository: `seed/` (the repository's files without its tests; the target is the one mutable file), `tests/`
(the repository's tests, part of the task so candidates cannot edit them, with the repository's root
conftest.py and pytest settings file, which pytest would not find outside the repository), `instances.toml`
(every test that passes on the seed, as train; with no val split, candidates are validated on those same tests)
and `task.toml` (`kind = "pytest"`). Init runs the suite once on the seed and refuses a task whose seed fails
tests, unless asked to leave those out. Each test is an instance: passing is the score; the duration of the
benchmark-style tests (names containing `--bench`, default "bench") is the objective that makes a faster
candidate better, kept by the task's objective frontier.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import textwrap
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import PASSING_STATUSES, Defaults
from .engine.budget import planned_evals
from .errors import UserInputError
from .task import load_task

# Names that are never code at any depth (VCS, caches, tool folders; none is a Python package name)...
SKIPPED_DIRS = {".git", ".hg", ".svn", ".venv", "__pycache__", ".pytest_cache", ".ruff_cache", ".mypy_cache",
                ".tox", ".nox", "node_modules", ".eggs"}
# ...and names that are build output, environments or documentation at the repository's top level, but can be
# real subpackages deeper down (`pkg/build/`), so they are skipped only there; so is every hidden folder there
# (`.github`, `.idea`, `.vscode`: never an importable package). A virtualenv is recognised by its pyvenv.cfg.
TOP_LEVEL_SKIPPED_DIRS = {"venv", "env", "build", "dist", "runs", "docs", "doc"}
# The files pytest reads its settings from, in the order it looks for them in a folder (pytest 9); the first
# one holding pytest settings wins.
PYTEST_CONFIG_FILES = ("pytest.toml", ".pytest.toml", "pytest.ini", ".pytest.ini", "pyproject.toml", "tox.ini",
                       "setup.cfg")
ROOT_CONFTEST_MODULE = "_evolver_root_conftest"
SHOWN_FAILURES = 5
MAX_SEED_BYTES = 50 * 1024 * 1024  # a seed is committed for every run: source code, not data sets
COLLECT_TIMEOUT_S = 120


@dataclass(frozen=True)
class InitResult:
    task_dir: Path
    name: str
    target: str  # path of the mutable file inside the seed
    tests: tuple[str, ...]  # the instances: collected tests that pass on the seed
    benchmarks: tuple[str, ...]
    seed_files: int
    skipped: tuple[str, ...] = ()  # skipped on the seed: left out of the instances
    failing: tuple[str, ...] = ()  # failing on the seed (only with allow_failing): left out of the instances
    support_files: tuple[str, ...] = ()  # written into the task's tests/ from outside the repository's tests

    @property
    def suggested_budget(self) -> int:
        """--budget-evals that validates the seed and a few accepted children (each runs every test once)."""
        return planned_evals(len(self.tests), Defaults.minibatch, Defaults.repeats)

    def to_json(self) -> dict[str, Any]:
        return {"task_dir": str(self.task_dir), "name": self.name, "target": self.target, "tests": list(self.tests),
                "benchmarks": list(self.benchmarks), "seed_files": self.seed_files, "skipped": list(self.skipped),
                "failing": list(self.failing), "support_files": list(self.support_files),
                "validation_calls": len(self.tests), "suggested_budget_evals": self.suggested_budget}


def _inside(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def _copy_tree(src: Path, dst: Path, skip: set[Path], top_level_skip: frozenset[str] = frozenset()) -> tuple[int, int]:
    """Copy the files under src (no caches, virtualenvs, VCS folders, `top_level_skip` folders directly under src,
    or `skip`, folders or files); returns (files, bytes)."""
    files = size = 0
    for dirpath, dirnames, filenames in os.walk(src):
        here = Path(dirpath)
        top = here == src
        dirnames[:] = sorted(d for d in dirnames if d not in SKIPPED_DIRS and not d.endswith(".egg-info")
                             and not (top and top_level_skip and (d in top_level_skip or d.startswith(".")))
                             and not (here / d / "pyvenv.cfg").is_file()
                             and (here / d).resolve() not in skip)
        for name in sorted(filenames):
            source = here / name
            if (source.is_symlink() or not source.is_file() or name.endswith((".pyc", ".pyo"))
                    or source.resolve() in skip):
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


def _has_pytest_settings(path: Path) -> bool:
    """Whether pytest would take its settings from this file (the rules of its config discovery)."""
    if path.name in ("pytest.toml", ".pytest.toml", "pytest.ini", ".pytest.ini"):
        return True  # these count even when empty
    text = path.read_text(encoding="utf-8", errors="replace")
    if path.name == "pyproject.toml":
        try:
            return "pytest" in tomllib.loads(text).get("tool", {})
        except tomllib.TOMLDecodeError:
            return False
    section = r"tool:pytest" if path.name == "setup.cfg" else r"pytest"
    return re.search(rf"^\[{section}\]\s*$", text, re.MULTILINE) is not None


def pytest_config_file(root: Path, tests_src: Path) -> Path | None:
    """The settings file pytest uses for the repository's tests, if it lies outside the tests folder: the first
    one found going up from the tests folder to the repository root, as pytest searches."""
    for folder in (tests_src, *tests_src.parents):
        if not _inside(folder, root):
            break
        for name in PYTEST_CONFIG_FILES:
            path = folder / name
            if path.is_file() and _has_pytest_settings(path):
                # One in the tests folder is copied with the tests already.
                return None if folder == tests_src else path
    return None


# Appended to the tests folder's own conftest.py when the repository also has a root one: both must be loaded,
# but a folder holds one conftest.py. The root one becomes a plugin this conftest loads; pytest gives a
# conftest's fixtures precedence over a plugin's, so the tests' fixtures override the root's of the same name,
# as in the repository. Appended, not prepended, so the line numbers in the tests' tracebacks stay true.
ROOT_CONFTEST_LOADER = f'''

# --- Added by `evolver init --pytest`: the repository's root conftest.py is {ROOT_CONFTEST_MODULE}.py,
# registered below as a plugin (as the root conftest, its fixtures yield to the ones of this file). ---
def _evolver_load_root_conftest() -> str:
    import importlib.util
    import sys
    from pathlib import Path

    name = "{ROOT_CONFTEST_MODULE}"
    if name not in sys.modules:  # loaded by path: the tests folder need not be on sys.path
        spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name(name + ".py"))
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return name


_evolver_plugins = globals().get("pytest_plugins", ())
pytest_plugins = [*([_evolver_plugins] if isinstance(_evolver_plugins, str) else _evolver_plugins),
                  _evolver_load_root_conftest()]
'''


def copy_pytest_support(root: Path, tests_src: Path, tests_dst: Path) -> list[str]:
    """Put the repository's root conftest.py and pytest settings file into the task's tests folder, where pytest
    finds them (the harness runs pytest with `--rootdir` the tests folder, so nothing above it counts). Returns
    the names written."""
    written: list[str] = []
    config = pytest_config_file(root, tests_src)
    if config is not None:
        shutil.copy2(config, tests_dst / config.name)
        written.append(config.name)
    conftest = root / "conftest.py"
    if conftest.is_file() and _inside(tests_src, root) and tests_src != root:
        own = tests_dst / "conftest.py"
        if own.is_file():
            shutil.copy2(conftest, tests_dst / f"{ROOT_CONFTEST_MODULE}.py")
            own.write_text(own.read_text(encoding="utf-8") + ROOT_CONFTEST_LOADER, encoding="utf-8")
            written.append(f"conftest.py (as {ROOT_CONFTEST_MODULE}.py)")
        else:
            shutil.copy2(conftest, own)
            written.append("conftest.py")
    return written


def _gist(feedback: str, width: int = 300) -> str:
    """The exception line of a test's feedback (a traceback ends in it), else its first line."""
    lines = [line.rstrip() for line in feedback.splitlines() if line.strip()]
    if lines and lines[0].startswith("Traceback"):
        lines = [line for line in lines[1:] if not line.startswith((" ", "\t"))] or lines
    return lines[0][:width] if lines else "(no message)"


def check_seed(task_dir: Path, backend: str | None) -> tuple[list[str], list[tuple[str, str, str]]]:
    """Run the task's suite on its seed as `evolver eval` would; returns (skipped ids, [(id, status, feedback)]
    of the tests that neither pass nor skip)."""
    from .eval_report import evaluate  # imported here: it pulls in the evaluation layer, git and SQLite

    with tempfile.TemporaryDirectory(prefix="evolver-init-") as run_dir:
        report = evaluate(task_dir, run_dir=Path(run_dir) / "run", use_cache=False, backend=backend)
    skipped = [r.instance for r in report.results if r.status == "skipped"]
    failing = [(r.instance, r.status, r.feedback) for r in report.results if r.status not in PASSING_STATUSES]
    return skipped, failing


def _swap_in(built: Path, task_dir: Path) -> None:
    """Replace task_dir (if any) by the finished build; the old folder stays in place until the swap."""
    if not task_dir.exists():
        built.rename(task_dir)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{task_dir.name}.old-", dir=task_dir.parent))
    old.rmdir()  # only the unique name is wanted: rename needs the destination free
    task_dir.rename(old)
    try:
        built.rename(task_dir)
    except BaseException:
        old.rename(task_dir)
        raise
    shutil.rmtree(old, ignore_errors=True)


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
        # Every test must pass: a candidate failing one is never accepted, and its validation stops at the first
        # failure (the tests that failed before run first).
        score = {{ direction = "max", role = "gate", at_least = 1.0 }}
        # Test durations are noisy: within 5% of the parent's is a tie.
        duration_s = {{ direction = "min", tolerance = 0.05 }}

        [evolve]
        # A child that passes every test and is not slower (beyond the tolerance) is kept; the objective frontier
        # keeps the fastest passing candidates as parents. The benchmarks are in every minibatch.
        frontier = "objective"
        accept = "ties"
        always_in_minibatch = {json.dumps(list(benchmarks))}

        [sandbox]
        backend = "auto"
        """)


@dataclass(frozen=True)
class _Plan:
    """The checked inputs of one init: where things are and where the task goes."""

    root: Path  # the repository
    target_path: Path
    tests_src: Path
    name: str
    task_dir: Path


def _plan(repo: str | Path, target: str, out: str | Path | None, name: str | None, tests: str,
          force: bool) -> _Plan:
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
    task_dir = Path(out).resolve() if out is not None else (Path(Defaults.runs_dir) / f"{name}-task").resolve()
    if _inside(root, task_dir) or _inside(task_dir, tests_src):
        raise UserInputError(f"--out: expected a new folder, not the repository, its tests or a folder holding "
                             f"them, found {task_dir}")
    if task_dir.exists():
        if not force:
            raise UserInputError(f"--out: {task_dir} exists; pass --force to replace it, or choose another --out")
        if any(task_dir.iterdir()) and not (task_dir / "task.toml").is_file():
            raise UserInputError(f"--force: {task_dir} is not a task folder (no task.toml); refusing to replace it")
    return _Plan(root=root, target_path=target_path, tests_src=tests_src, name=name, task_dir=task_dir)


def _passing(ids: list[str], skipped: list[str], failing: list[tuple[str, str, str]],
             allow_failing: bool) -> list[str]:
    """The tests that pass on the seed; failing ones are an error unless allowed."""
    if failing and not allow_failing:
        shown = "\n".join(f"  {i} [{status}]: {_gist(feedback)}" for i, status, feedback in failing[:SHOWN_FAILURES])
        more = f"\n  ... and {len(failing) - SHOWN_FAILURES} more" if len(failing) > SHOWN_FAILURES else ""
        raise UserInputError(f"--pytest: expected every test to pass (or be skipped) on the repository's own "
                             f"code, found {len(failing)} of {len(ids)} failing in the task:\n{shown}{more}\n"
                             "Fix them first (a failing seed gives evolution nothing to keep), or pass "
                             "--allow-failing to leave them out of the task")
    # Skipped and failing tests measure no speed, and a candidate with any result that is not ok loses its
    # duration objective: they are left out, so the instances are tests that pass on the seed.
    dropped = set(skipped) | {i for i, _, _ in failing}
    kept = [i for i in ids if i not in dropped]
    if not kept:
        raise UserInputError(f"--pytest: expected tests that pass on the repository's own code, found none of "
                             f"{len(ids)} ({len(skipped)} skipped, {len(failing)} failing)")
    return kept


def init_pytest_task(repo: str | Path, target: str, *, out: str | Path | None = None, name: str | None = None,
                     tests: str = Defaults.tests, bench: str = Defaults.bench_marker,
                     timeout_s: float = Defaults.timeout_s, force: bool = False, allow_failing: bool = False,
                     backend: str | None = None) -> InitResult:
    plan = _plan(repo, target, out, name, tests, force)
    root, tests_src, task_dir = plan.root, plan.tests_src, plan.task_dir
    # src layout: the package lives in src/, which is what the tests import from.
    seed_root = root / "src" if _inside(plan.target_path, root / "src") else root
    target_rel = plan.target_path.relative_to(seed_root).as_posix()
    # Built in a sibling folder and swapped in at the end: a failed init (with --force) keeps the previous task.
    task_dir.parent.mkdir(parents=True, exist_ok=True)
    build = Path(tempfile.mkdtemp(prefix=f".{task_dir.name}.init-", dir=task_dir.parent))
    try:
        seed_dir = build / "seed"
        # The root conftest.py is test support (it goes into tests/ below), not code of the seed.
        skip = {tests_src, task_dir, build, root / "conftest.py"}
        top_level_skip = frozenset(TOP_LEVEL_SKIPPED_DIRS) if seed_root == root else frozenset()
        files, _ = _copy_tree(seed_root, seed_dir, skip, top_level_skip)
        if not (seed_dir / target_rel).is_file():
            raise UserInputError(f"--target: expected {target} to be copied into the task's seed, found it left "
                                 "out: it lies in a folder init does not copy (a VCS, cache or virtualenv folder, "
                                 f"or top-level {', '.join(sorted(TOP_LEVEL_SKIPPED_DIRS))}) or is a symlink")
        shutil.copytree(tests_src, build / "tests", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        support = copy_pytest_support(root, tests_src, build / "tests")
        ids = collect_tests(build / "tests", seed_dir)
        _write_instances(build, ids, "Every collected test")
        (build / "task.toml").write_text(task_toml(plan.name, target_rel, (), timeout_s), encoding="utf-8")
        load_task(build)  # what evolver will read must load

        skipped, failing = check_seed(build, backend)
        kept = _passing(ids, skipped, failing, allow_failing)
        benchmarks = tuple(i for i in kept if bench.lower() in i.lower())
        _write_instances(build, kept, "Every collected test that passes on the seed")
        (build / "task.toml").write_text(task_toml(plan.name, target_rel, benchmarks, timeout_s), encoding="utf-8")
        load_task(build)
        _swap_in(build, task_dir)
    except BaseException:
        shutil.rmtree(build, ignore_errors=True)
        raise
    return InitResult(task_dir=task_dir, name=plan.name, target=target_rel, tests=tuple(kept),
                      benchmarks=benchmarks, seed_files=files, skipped=tuple(skipped),
                      failing=tuple(i for i, _, _ in failing), support_files=tuple(support))


def _write_instances(task_dir: Path, ids: list[str], what: str) -> None:
    (task_dir / "instances.toml").write_text(
        f"# {what}, as train only: a repository's own suite is what the code must pass, so candidates are\n"
        f"# validated on these same tests (an id may not be in two splits).\n"
        f"train = {_toml_list(ids)}\n", encoding="utf-8")
