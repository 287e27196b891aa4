"""Candidates keep the seed's bytes: what no proposer changed is byte for byte what the seed folder holds.

A mutable file that is not UTF-8 is not mutable (no proposer is shown it), the run and `evolver eval` say so
once, and it stays as it is in every candidate. A builtin mutant changes its one node and nothing else: CRLF line
endings, a byte-order mark, non-ASCII text and a missing final newline survive the text round trip. Git's
end-of-line conversion (a user's `core.autocrlf`, the seed's own .gitattributes) never rewrites a candidate.
"""

from __future__ import annotations

import difflib
import io
import json
import tarfile
from pathlib import Path

import pytest
from conftest import write_task
from engine_kit import make_engine
from engine_kit import write_task as write_engine_task

from evolver import cli
from evolver.engine.budget import Budget
from evolver.proposers.builtin import BuiltinProposer
from evolver.repo import RunRepo

LATIN1 = b'# -*- coding: latin-1 -*-\nNAME = "caf\xe9"\n'  # valid Python, not UTF-8


def test_a_mutable_file_that_is_not_utf8_is_kept_as_it_is_and_said_once(tmp_path: Path, capsys) -> None:
    task = write_task(tmp_path / "task", train=("i1", "i2", "i3"), mutable=("**/*.py",))
    (task / "seed" / "legacy.py").write_bytes(LATIN1)
    run_dir = tmp_path / "run"
    assert cli.main(["run", str(task), "--model", "builtin", "--max-iterations", "4", "--run", str(run_dir)]) == 0
    said = " ".join(capsys.readouterr().err.split())  # the terminal's width may wrap it
    assert said.count("warning: legacy.py: not UTF-8 text, so not mutable") == 1, said
    repo = RunRepo.open_existing(run_dir / "repo")
    candidates = [b for b in repo.branches() if b.startswith("evolver/run/")]
    assert len(candidates) > 1  # the seed and children: sol.py was mutated
    for branch in candidates:
        assert repo.read_files(repo.resolve(branch))["legacy.py"] == LATIN1, branch

    assert cli.main(["eval", str(task), "--run", str(tmp_path / "eval"), "--json"]) == 0
    notes = json.loads(capsys.readouterr().out)["notes"]
    assert any("legacy.py" in n and "not UTF-8" in n for n in notes), notes


SOURCES = {
    "crlf": b"WEIGHT = 1.0\r\nBIAS = 0.0\r\n\r\n\r\ndef f(x):\r\n    y = WEIGHT * x\r\n    return y + BIAS\r\n",
    "bom": b"\xef\xbb\xbfWEIGHT = 1.0\nBIAS = 0.0\n\n\ndef f(x):\n    y = WEIGHT * x\n    return y + BIAS\n",
    "non-ascii": "# café, naïve: ünïcode\nWEIGHT = 1.0  # π\nBIAS = 0.0\n\n\ndef f(x):\n    s = 'ß'\n"
                 "    y = WEIGHT * x\n    return y + BIAS\n".encode(),
    "no final newline": b"WEIGHT = 1.0\nBIAS = 0.0\n\n\ndef f(x):\n    y = WEIGHT * x\n    return y + BIAS",
    "all of them": "\ufeff# café\r\nWEIGHT = 1.0\r\nBIAS = 0.0\r\n\r\n\r\ndef f(x):\r\n    y = WEIGHT * x  # π\r\n"
                   "    return y + BIAS".encode(),
}


@pytest.mark.parametrize("case", sorted(SOURCES))
def test_builtin_mutants_change_one_place_and_keep_every_other_byte(tmp_path: Path, case: str) -> None:
    seed_bytes = SOURCES[case]
    task = write_engine_task(tmp_path / "task", train=("a", "b", "c"))
    (task / "seed" / "sol.py").write_bytes(seed_bytes)
    kit = make_engine(tmp_path, BuiltinProposer(), examples={k: {} for k in "abc"}, task_dir=task,
                      budget=Budget(max_iterations=8), score=lambda files, example: 0.5)
    try:
        kit.engine.start(kit.seed)
        kit.engine.run()
        repo = kit.engine.repo
        assert repo.read_files(kit.seed)["sol.py"] == seed_bytes  # the seed commit is the folder, byte for byte
        proposals = kit.store.proposals(kit.engine.run_name)
        children = [p.child_sha for p in proposals if p.child_sha]
        assert len(children) >= 4, [(p.reason, p.detail[:200]) for p in proposals]
        before = seed_bytes.splitlines(keepends=True)
        for child in children:
            data = repo.read_files(child)["sol.py"]
            after = data.splitlines(keepends=True)
            hunks = [op for op in difflib.SequenceMatcher(None, before, after).get_opcodes() if op[0] != "equal"]
            assert len(hunks) == 1, (case, data)  # one mutated place; every other line as it was
            assert data.startswith(b"\xef\xbb\xbf") == seed_bytes.startswith(b"\xef\xbb\xbf")
            assert data.endswith(b"\n") == seed_bytes.endswith(b"\n")
            if b"\r\n" in seed_bytes:
                assert all(line.endswith(b"\r\n") for line in after[:-1]), data
    finally:
        kit.close()


def test_git_never_converts_line_endings_of_a_candidate(tmp_path: Path, monkeypatch) -> None:
    config = tmp_path / "gitconfig"
    config.write_text("[core]\n\tautocrlf = true\n")
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(config))
    seed = tmp_path / "seed"
    seed.mkdir()
    files = {"crlf.py": b"a = 1\r\nb = 2\r\n", "lf.py": b"x = 1\n", "kept.txt": b"not exported? it is\n",
             ".gitattributes": b"* text=auto\nlf.py eol=crlf\nkept.txt export-ignore\n"}
    for name, data in files.items():
        (seed / name).write_bytes(data)
    repo = RunRepo.open_or_init(tmp_path / "repo")
    sha = repo.commit_folder(seed, "seed")
    assert repo.read_files(sha) == files
    with tarfile.open(fileobj=io.BytesIO(repo.archive(sha))) as tar:
        archived = {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}  # type: ignore[union-attr]
    assert archived == files  # what a sandbox gets
