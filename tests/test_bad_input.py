"""Bad input a user can give: each ends in exit 2 with one line naming what is wrong, before anything is written.

Huge instance files load in linear time, an id in two splits is refused, a symbolic link in a task folder is
refused (it could let a candidate or the task reach outside its folder), and `--run` naming a file is refused.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from conftest import write_task

from evolver import api, cli
from evolver.errors import TaskError, UserInputError
from evolver.evaluation import instances_for
from evolver.run_state import validation_ids
from evolver.task import load_task


def _cli(capsys: pytest.CaptureFixture, *argv: str) -> tuple[int, list[str]]:
    """Exit code and stderr lines of one in-process CLI call."""
    code = cli.main(list(argv))
    return code, capsys.readouterr().err.strip().splitlines()


def _instances(task: Path, **splits: list[str]) -> None:
    (task / "instances.toml").write_text("".join(f"{s} = {json.dumps(ids)}\n" for s, ids in splits.items()))


def test_200000_instance_ids_load_in_linear_time(tmp_path: Path) -> None:
    task = write_task(tmp_path / "task")
    ids = [f"instance-{k:06d}" for k in range(200_000)]
    _instances(task, train=ids[:150_000], val=ids[150_000:190_000], test=ids[190_000:])
    started = time.perf_counter()
    loaded = load_task(task)
    pairs = instances_for(loaded, "all")
    val = validation_ids(loaded)
    took = time.perf_counter() - started
    print(f"200,000 ids: load_task + instances_for + validation_ids in {took:.2f} s")
    assert len(pairs) == 200_000 and len(val) == 40_000
    assert took < 20, f"{took:.1f} s: something on the start path is not linear in the number of ids"


@pytest.mark.parametrize(("splits", "key", "shared"), [
    ({"train": ["a", "b", "c"], "val": ["c", "d", "b"]}, "train/val", ["b", "c"]),
    ({"train": ["a"], "val": ["v"], "test": ["a"]}, "train/test", ["a"]),
    ({"train": ["a"], "val": ["v"], "test": ["t", "v"]}, "val/test", ["v"]),
])
def test_an_id_in_two_splits_is_refused_naming_it_and_both_splits(tmp_path: Path, capsys, splits, key,
                                                                   shared) -> None:
    task = write_task(tmp_path / "task")
    _instances(task, **splits)
    with pytest.raises(TaskError) as err:
        load_task(task)
    assert err.value.key == key and str(shared) in err.value.found
    run_dir = tmp_path / "run"
    code, lines = _cli(capsys, "run", str(task), "--model", "builtin", "--max-iterations", "1", "--run",
                       str(run_dir))
    assert code == 2 and len(lines) == 1, lines
    assert "instances.toml" in lines[0] and key in lines[0] and str(shared) in lines[0]
    assert not run_dir.exists()


def test_many_duplicates_are_named_a_few_and_counted(tmp_path: Path) -> None:
    task = write_task(tmp_path / "task")
    _instances(task, train=[f"i{k}" for k in range(100)], val=[f"i{k}" for k in range(50, 150)])
    with pytest.raises(TaskError, match=r"'i50', 'i51', 'i52', 'i53', 'i54'\] and 45 more in both"):
        load_task(task)


LINKS = {
    "absolute link in the seed": ("seed/secret.txt", "/etc/passwd"),
    "relative link in the seed": ("seed/evaluator.py", "../evaluate.py"),
    "link to a folder in the seed": ("seed/etc", "/etc"),
    "link in the task folder": ("data.txt", "/etc/passwd"),
    "link in a subfolder of the task": ("data/inputs.json", "../../outside.json"),
}


@pytest.mark.parametrize("case", sorted(LINKS))
def test_a_symbolic_link_in_the_task_folder_is_refused_before_anything_is_written(tmp_path: Path, capsys,
                                                                                   case: str) -> None:
    rel, target = LINKS[case]
    task = write_task(tmp_path / "task")
    (tmp_path / "outside.json").write_text("{}")
    (task / rel).parent.mkdir(parents=True, exist_ok=True)
    os.symlink(target, task / rel)
    run_dir = tmp_path / "run"
    for verb in (["run", str(task), "--model", "builtin", "--max-iterations", "1"], ["eval", str(task)]):
        code, lines = _cli(capsys, *verb, "--run", str(run_dir))
        assert code == 2 and len(lines) == 1, lines
        assert str(task / rel) in lines[0] and "link" in lines[0] and target in lines[0]
        assert not run_dir.exists()


def test_a_link_in_a_seed_folder_given_to_optimize_is_refused(tmp_path: Path) -> None:
    seed = tmp_path / "prompts"
    seed.mkdir()
    (seed / "system.txt").write_text("You are careful.\n")
    os.symlink("/etc/passwd", seed / "passwd")
    with pytest.raises(UserInputError, match=r"passwd.*link"):
        api.optimize(seed=seed, evaluator=lambda c: 1.0, model="builtin", max_iterations=1,
                     run_dir=tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_a_run_directory_that_is_a_file_is_refused(tmp_path: Path, capsys) -> None:
    task = write_task(tmp_path / "task")
    (task / "instances.toml").write_text('train = ["i1", "i2"]\nval = ["i3"]\n')
    not_a_dir = tmp_path / "notes.txt"
    not_a_dir.write_text("mine\n")
    for verb in (["run", str(task), "--model", "builtin", "--max-iterations", "1"], ["eval", str(task)]):
        code, lines = _cli(capsys, *verb, "--run", str(not_a_dir))
        assert code == 2 and len(lines) == 1, lines
        assert str(not_a_dir) in lines[0] and "found a file" in lines[0]
    for verb in ("resume", "status"):
        code, lines = _cli(capsys, verb, str(not_a_dir))
        assert code == 2 and len(lines) == 1 and str(not_a_dir) in lines[0], lines
    assert not_a_dir.read_text() == "mine\n"
