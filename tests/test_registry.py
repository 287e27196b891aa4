"""Registries: evolver's own entries, and third-party ones found through real entry points.

The plug-in is a package written into tmp_path with a `<name>-0.0.0.dist-info/` folder beside it (METADATA and
entry_points.txt), as pip would install it: importlib.metadata finds it on sys.path for real, in this process
and in a CLI subprocess whose PYTHONPATH names the folder.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import write_task

from evolver.api import evaluate
from evolver.errors import TaskError, UserInputError
from evolver.registry import PROPOSERS, SANDBOXES, TASK_KINDS, Registry
from evolver.sandbox import ProcessSandbox, make_sandbox
from evolver.task import load_task
from evolver.task_kinds import PYTEST, PYTHON, TaskKind

ROOT = Path(__file__).resolve().parent.parent
PLUGIN_BACKEND = "renamed-process"

PLUGIN_MODULES = {
    "backend.py": '''
        from evolver.sandbox import ProcessSandbox


        class RenamedProcess(ProcessSandbox):
            name = "renamed-process"


        def make(options):
            return RenamedProcess()
        ''',
    "proposer.py": '''
        from evolver.proposers.base import Proposal


        class Annotate:
            """Appends a comment naming the iteration: a change that always applies."""

            name = "demo-annotate"

            def propose(self, ctx, rng):
                text = ctx.parent_files["sol.py"] + f"# iteration {ctx.iteration}\\n"
                return Proposal(changes={"sol.py": text}, diagnosis="demo", change="annotate",
                                operator="comment")


        def make(settings):
            return Annotate()
        ''',
    "kinds.py": '''
        from evolver.task_kinds import KindSpec

        JUDGED = KindSpec("judged", harness_mode="python", required_files=("evaluator",))
        SHELL = KindSpec("shell", harness_mode="shell")
        ''',
}
ENTRY_POINTS = """\
[evolver.proposers]
demo-annotate = evolver_demo_plugin.proposer:make

[evolver.sandboxes]
renamed-process = evolver_demo_plugin.backend:make

[evolver.task_kinds]
judged = evolver_demo_plugin.kinds:JUDGED
shell = evolver_demo_plugin.kinds:SHELL
broken = evolver_demo_plugin.no_such_module:KIND
"""


@pytest.fixture
def plugin_site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A folder holding an 'installed' plug-in package, first on sys.path for this test."""
    site = tmp_path / "site"
    package = site / "evolver_demo_plugin"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    for name, text in PLUGIN_MODULES.items():
        (package / name).write_text(textwrap.dedent(text))
    dist = site / "evolver_demo_plugin-0.0.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: evolver-demo-plugin\nVersion: 0.0.0\n")
    (dist / "entry_points.txt").write_text(ENTRY_POINTS)
    monkeypatch.syspath_prepend(str(site))
    return site


def plugin_task(root: Path, backend: str = PLUGIN_BACKEND) -> Path:
    task = write_task(root, train=("i1", "i2"))
    toml = task / "task.toml"
    toml.write_text(toml.read_text().replace('backend = "process"', f'backend = "{backend}"'))
    return task


def test_builtin_entries_load_without_entry_points() -> None:
    assert {"process", "docker"} <= set(SANDBOXES.names()) and "auto" not in SANDBOXES.names()
    assert {"python", "pytest"} <= set(TASK_KINDS.names())
    assert {"reflective", "builtin"} <= set(PROPOSERS.names())
    assert TASK_KINDS.get("python") is PYTHON and TASK_KINDS.get("pytest") is PYTEST
    for name in TASK_KINDS.names():
        kind = TASK_KINDS.get(name)
        assert isinstance(kind, TaskKind) and kind.name == name
    assert not PYTEST.trusted_scores and PYTEST.collects_instances and PYTHON.trusted_scores
    assert isinstance(make_sandbox("process"), ProcessSandbox)


def test_unknown_names_fail_listing_the_known_ones() -> None:
    with pytest.raises(UserInputError, match=r"expected one of .*docker.*process.*found 'vm'.*evolver\.sandboxes"):
        SANDBOXES.get("vm")
    with pytest.raises(UserInputError, match=r"proposer: expected one of builtin, reflective.*found 'nope'"):
        PROPOSERS.check("nope")
    with pytest.raises(UserInputError, match=r"\[sandbox\] backend: expected \"auto\", \"docker\" or \"process\""):
        make_sandbox("vm")
    assert "nope" not in PROPOSERS and "builtin" in PROPOSERS and 3 not in PROPOSERS


def test_entries_registered_from_python() -> None:
    reg: Registry[str] = Registry("evolver.test-only-group", "widget", {})
    reg.register("w", "the widget")
    assert reg.names() == ["w"] and reg.get("w") == "the widget"


def test_third_party_backend_is_used_by_evaluate(plugin_site: Path, tmp_path: Path) -> None:
    assert PLUGIN_BACKEND in SANDBOXES.names()
    task = plugin_task(tmp_path / "task")
    assert load_task(task).sandbox.backend == PLUGIN_BACKEND
    report = evaluate(task, run_dir=tmp_path / "run", use_cache=False)
    assert report.backend == PLUGIN_BACKEND and report.isolation["backend"] == PLUGIN_BACKEND
    assert [r.status for r in report.results] == ["ok", "ok"]
    assert {r.backend for r in report.results} == {PLUGIN_BACKEND}


def test_third_party_backend_through_the_cli(plugin_site: Path, tmp_path: Path) -> None:
    task = plugin_task(tmp_path / "task")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(plugin_site), str(ROOT), str(ROOT / "sandboxes" /
                                                                                         "harness")])}

    def evolver(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "evolver.cli", *args], capture_output=True, text=True,
                              timeout=120, env=env)

    named = evolver("eval", str(task), "--run", str(tmp_path / "run"), "--json")
    assert named.returncode == 0, named.stderr
    assert json.loads(named.stdout)["backend"] == PLUGIN_BACKEND
    # The flag's choices are the registry's names: the plug-in's is one of them.
    plain = plugin_task(tmp_path / "plain", backend="process")
    flag = evolver("eval", str(plain), "--run", str(tmp_path / "run2"), "--backend", PLUGIN_BACKEND, "--json")
    assert flag.returncode == 0, flag.stderr
    assert json.loads(flag.stdout)["backend"] == PLUGIN_BACKEND
    bad = evolver("eval", str(plain), "--backend", "vm")
    assert bad.returncode == 2 and PLUGIN_BACKEND in bad.stderr and "docker" in bad.stderr


def test_third_party_task_kind_is_accepted_by_load_task(plugin_site: Path, tmp_path: Path) -> None:
    task = write_task(tmp_path / "task")
    toml = task / "task.toml"
    toml.write_text(toml.read_text().replace("[evaluate]\n", '[evaluate]\nkind = "judged"\n'))
    loaded = load_task(task)
    assert loaded.kind == "judged" and loaded.harness_mode == "python" and loaded.trusted_scores
    assert loaded.instances is not None and loaded.instances.train == ("i1",)

    (task / "evaluate.py").unlink()  # the kind requires its evaluator file
    with pytest.raises(TaskError, match=r"\[evaluate\] evaluator: expected an existing file"):
        load_task(task)


def test_third_party_kinds_that_cannot_run_fail_as_task_errors(plugin_site: Path, tmp_path: Path) -> None:
    task = write_task(tmp_path / "task")
    toml = task / "task.toml"
    text = toml.read_text()
    toml.write_text(text.replace("[evaluate]\n", '[evaluate]\nkind = "shell"\n'))
    with pytest.raises(TaskError) as err:
        load_task(task)
    assert err.value.key == "[evaluate] kind" and "harness mode" in err.value.expected

    toml.write_text(text.replace("[evaluate]\n", '[evaluate]\nkind = "broken"\n'))
    with pytest.raises(UserInputError, match=r"task kind 'broken': its entry point .* failed to load"):
        load_task(task)

    toml.write_text(text.replace("[evaluate]\n", '[evaluate]\nkind = "nope"\n'))
    with pytest.raises(TaskError) as err:
        load_task(task)
    assert '"judged"' in err.value.expected and '"python"' in err.value.expected


def test_third_party_task_kind_evaluates_end_to_end(plugin_site: Path, tmp_path: Path) -> None:
    task = write_task(tmp_path / "task", train=("i1", "i2"))
    toml = task / "task.toml"
    toml.write_text(toml.read_text().replace("[evaluate]\n", '[evaluate]\nkind = "judged"\n'))
    report = evaluate(task, run_dir=tmp_path / "run", use_cache=False)
    assert [r.status for r in report.results] == ["ok", "ok"] and report.trusted_scores


def test_third_party_proposer_runs_in_evolver_run(plugin_site: Path, tmp_path: Path) -> None:
    task = write_task(tmp_path / "task", train=("i1", "i2"))
    (task / "instances.toml").write_text('train = ["i1", "i2"]\nval = ["i3"]\n')
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(plugin_site), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-m", "evolver.cli", "run", str(task), "--model", "builtin", "--proposer",
                           "demo-annotate", "--max-iterations", "2", "--run", str(tmp_path / "run"), "--json"],
                          capture_output=True, text=True, env=env, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    status = subprocess.run([sys.executable, "-m", "evolver.cli", "status", str(tmp_path / "run"), "--json"],
                            capture_output=True, text=True, env=env, timeout=60, check=True)
    doc = json.loads(status.stdout)
    assert doc["proposer"] == "demo-annotate" and sum(doc["proposals"].values()) == 2
    shown = subprocess.run([sys.executable, "-m", "evolver.cli", "show", str(tmp_path / "run"), "c1", "--json"],
                           capture_output=True, text=True, env=env, timeout=60, check=True)
    c1 = json.loads(shown.stdout)
    assert c1["proposer"] == "demo-annotate" and c1["operator"] == "comment" and "# iteration 1" in c1["diff"]
    # An unknown proposer fails before anything is written, naming the ones there are.
    bad = subprocess.run([sys.executable, "-m", "evolver.cli", "run", str(task), "--model", "builtin", "--proposer",
                          "nope", "--max-iterations", "1", "--run", str(tmp_path / "bad")],
                         capture_output=True, text=True, env=env, timeout=60, check=False)
    assert bad.returncode == 2 and "demo-annotate" in bad.stderr and not (tmp_path / "bad").exists()
