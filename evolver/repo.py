"""Candidates as git commits on branches of a bare repository in the run directory.

The seed folder becomes a root commit on `evolver/<run>/seed`; each candidate is a commit on
`evolver/<run>/c<N>` whose message carries `Evolver-Parent:` and `Evolver-Kind:` trailers (merges are real
two-parent commits). A candidate's cache key is its git *tree* sha: two commits with the same files share
their evaluations. Sandboxes get a tree as a tar archive, never a shared checkout.
"""

from __future__ import annotations

import errno
import os
import subprocess
import tempfile
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import git

from .errors import UserInputError

IDENTITY = {
    "GIT_AUTHOR_NAME": "evolver",
    "GIT_AUTHOR_EMAIL": "evolver@localhost",
    "GIT_COMMITTER_NAME": "evolver",
    "GIT_COMMITTER_EMAIL": "evolver@localhost",
}
EXCLUDES = "__pycache__/\n*.py[cod]\n.pytest_cache/\n.DS_Store\n"
# Candidates are kept byte for byte: no end-of-line conversion, filter or keyword expansion when the seed is
# committed or a tree archived, whatever the seed's own .gitattributes or the user's git configuration say
# (info/attributes overrides the tree's; `core.autocrlf=false` is passed to every git call as well).
ATTRIBUTES = "* -text -eol -filter -ident -working-tree-encoding -export-ignore -export-subst\n"
# OS errors git reports by their text when it cannot write (it prints strerror): which one, to say so.
_WRITE_ERRNOS = (errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EIO)
KINDS = ("seed", "mutation", "merge", "builtin", "manual")


@dataclass(frozen=True)
class CommitInfo:
    sha: str
    tree: str
    parents: tuple[str, ...]
    kind: str | None
    message: str


def seed_branch(run: str) -> str:
    return f"evolver/{run}/seed"


def candidate_branch(run: str, n: int) -> str:
    return f"evolver/{run}/c{n}"


class RunRepo:
    """A bare git repository holding every candidate of a run (or of several runs)."""

    def __init__(self, path: Path, repo: git.Repo) -> None:
        self.path = path
        self.repo = repo
        # gitpython talks to one long-lived `git cat-file --batch` process: two threads reading objects at
        # once corrupt its stream (and can hang on it), so object reads are serialised. Writes go through
        # separate git processes with their own index files and need no lock.
        self._read_lock = threading.Lock()

    @classmethod
    def open_or_init(cls, path: str | Path) -> RunRepo:
        """The run's repository for writing candidates: created when missing."""
        p = Path(path)
        if (p / "HEAD").exists():
            repo = git.Repo(p)
        else:
            p.mkdir(parents=True, exist_ok=True)
            repo = git.Repo.init(p, bare=True, initial_branch="main")
        info = p / "info"
        info.mkdir(exist_ok=True)
        for name, text in (("exclude", EXCLUDES), ("attributes", ATTRIBUTES)):
            if not (info / name).is_file() or (info / name).read_text() != text:
                (info / name).write_text(text)
        return cls(p, repo)

    @classmethod
    def open_existing(cls, path: str | Path) -> RunRepo:
        """An existing repository, opened without writing anything: for views, and for `--repo`."""
        try:
            repo = git.Repo(Path(path), search_parent_directories=False)
        except (git.InvalidGitRepositoryError, git.NoSuchPathError):
            raise UserInputError(f"{path}: expected a git repository, found none") from None
        return cls(Path(path), repo)

    # -- plumbing --------------------------------------------------------------------------------------
    def _git(self, *args: str, env: dict[str, str] | None = None, input_bytes: bytes | None = None,
             writes: str | None = None) -> bytes:
        """Run git on this repository. `writes`: the folder of the repository the command writes (objects,
        refs); its failure for an OS reason (read-only, disk full) is raised as that OSError."""
        # LC_ALL=C: git's messages, and the OS error texts in them, in the words os.strerror uses.
        full_env = {**os.environ, **IDENTITY, "LC_ALL": "C", **(env or {})}
        proc = subprocess.run(["git", "-c", "core.autocrlf=false", f"--git-dir={self.repo.git_dir}", *args],
                              input=input_bytes, capture_output=True, env=full_env, check=False)
        if proc.returncode != 0:
            stderr = proc.stderr.decode(errors="replace")
            if writes is not None:
                self._raise_os_error(self.path / writes, stderr)
            raise RuntimeError(f"git {' '.join(args[:2])} failed: {stderr}")
        return proc.stdout

    @staticmethod
    def _raise_os_error(folder: Path, stderr: str) -> None:
        """Raise the OS error behind a failed git write, as an OSError naming the folder: the one creating a
        file there gives (read-only, permissions), else the one git names (a full disk still lets an empty
        file be created). Returns when there is none: then git failed for a reason of its own."""
        try:
            with tempfile.TemporaryFile(dir=folder) as probe:
                probe.write(b"\0" * 4096)
                probe.flush()
        except OSError as exc:
            raise OSError(exc.errno, exc.strerror, str(folder)) from None
        for code in _WRITE_ERRNOS:
            if os.strerror(code) in stderr:
                raise OSError(code, os.strerror(code), str(folder))

    def _commit_tree(self, tree: str, parents: tuple[str, ...], message: str) -> str:
        args = ["commit-tree", tree]
        for p in parents:
            args += ["-p", p]
        return self._git(*args, input_bytes=message.encode(), writes="objects").decode().strip()

    @staticmethod
    def message(subject: str, kind: str, parents: tuple[str, ...], body: str = "", run: str | None = None) -> str:
        if kind not in KINDS:
            raise ValueError(f"unknown candidate kind {kind!r}")
        trailers = [f"Evolver-Kind: {kind}"] + [f"Evolver-Parent: {p}" for p in parents]
        if run:
            trailers.append(f"Evolver-Run: {run}")
        parts = [subject.strip() or kind, body.strip(), "\n".join(trailers)]
        return "\n\n".join(p for p in parts if p) + "\n"

    # -- writing ---------------------------------------------------------------------------------------
    def commit_folder(self, folder: Path, subject: str, kind: str = "seed", parents: tuple[str, ...] = (),
                      run: str | None = None) -> str:
        """Commit the files of `folder` (git's excludes apply) as one commit; returns its sha."""
        with tempfile.TemporaryDirectory() as tmp:
            env = {"GIT_INDEX_FILE": str(Path(tmp) / "index"), "GIT_WORK_TREE": str(folder.resolve())}
            self._git("add", "-A", "--", ".", env=env, writes="objects")
            tree = self._git("write-tree", env=env, writes="objects").decode().strip()
        return self._commit_tree(tree, parents, self.message(subject, kind, parents, run=run))

    def tree_of_changes(self, parent: str, changes: Mapping[str, bytes | str | None]) -> str:
        """The tree sha `parent` would have with `changes` applied (written to the object store, no commit)."""
        with tempfile.TemporaryDirectory() as tmp:
            return self._write_tree(parent, changes, str(Path(tmp) / "index"))

    def commit_changes(self, parent: str, changes: Mapping[str, bytes | str | None], subject: str, kind: str,
                       body: str = "", extra_parents: tuple[str, ...] = (), run: str | None = None) -> str:
        """A child of `parent` with files replaced (bytes or text) or deleted (None); '/'-relative paths."""
        return self.commit_tree(self.tree_of_changes(parent, changes), (parent, *extra_parents), subject, kind,
                                body, run)

    def commit_tree(self, tree: str, parents: tuple[str, ...], subject: str, kind: str, body: str = "",
                    run: str | None = None) -> str:
        """A commit of an already written tree (see tree_of_changes) with evolver's trailers."""
        return self._commit_tree(tree, parents, self.message(subject, kind, parents, body, run=run))

    def _write_tree(self, parent: str, changes: Mapping[str, bytes | str | None], index: str) -> str:
        env = {"GIT_INDEX_FILE": index}
        self._git("read-tree", parent, env=env)
        # One --index-info batch: "mode sha<TAB>path" adds, mode 0 removes (works in a bare repo). NUL-terminated
        # records (-z): a path is data, and a newline in one must not start a record of its own.
        lines = []
        for path, content in sorted(changes.items()):
            if content is None:
                lines.append(f"0 {'0' * 40}\t{path}")
            else:
                data = content.encode("utf-8") if isinstance(content, str) else content
                blob = self._git("hash-object", "-w", "--stdin", input_bytes=data, writes="objects").decode().strip()
                lines.append(f"100644 {blob}\t{path}")
        if lines:
            self._git("update-index", "-z", "--index-info", env=env,
                      input_bytes="".join(line + "\0" for line in lines).encode())
        return self._git("write-tree", env=env, writes="objects").decode().strip()

    def set_branch(self, name: str, sha: str) -> None:
        self._git("update-ref", f"refs/heads/{name}", sha, writes="refs")

    def keep_ref(self, name: str, sha: str) -> None:
        """Keep a commit reachable without a branch (e.g. a replaced seed)."""
        self._git("update-ref", f"refs/evolver/{name}", sha, writes="refs")

    # -- reading ---------------------------------------------------------------------------------------
    def resolve(self, ref: str) -> str:
        """Commit sha of a branch name, tag, or (abbreviated) sha; UserInputError when unknown."""
        for candidate in (ref, f"refs/heads/{ref}"):
            try:
                return self._git("rev-parse", "--verify", "--quiet", f"{candidate}^{{commit}}").decode().strip()
            except RuntimeError:
                continue
        branches = [b for b in self.branches() if b.startswith("evolver/")][:8]
        hint = f"; branches here include {', '.join(branches)}" if branches else ""
        raise UserInputError(f"{self.path}: --ref: expected a branch or commit of this repository, found "
                             f"{ref!r} unknown{hint}")

    def branch_sha(self, name: str) -> str | None:
        try:
            return self._git("rev-parse", "--verify", "--quiet", f"refs/heads/{name}").decode().strip()
        except RuntimeError:
            return None

    def branches(self) -> list[str]:
        out = self._git("for-each-ref", "--format=%(refname:short)", "refs/heads/").decode()
        return [line for line in out.splitlines() if line]

    def info(self, sha: str) -> CommitInfo:
        with self._read_lock:
            return self._info(sha)

    def _info(self, sha: str) -> CommitInfo:
        c = self.repo.commit(sha)
        kind = None
        for line in str(c.message).splitlines():
            if line.startswith("Evolver-Kind:"):
                kind = line.split(":", 1)[1].strip()
        return CommitInfo(sha=c.hexsha, tree=c.tree.hexsha, parents=tuple(p.hexsha for p in c.parents),
                          kind=kind, message=str(c.message))

    def merge_base(self, a: str, b: str) -> str | None:
        """The best common ancestor of two commits (git merge-base), or None when they share no history."""
        try:
            return self._git("merge-base", a, b).decode().strip() or None
        except RuntimeError:  # exit 1: no common ancestor
            return None

    def tree_sha(self, sha: str) -> str:
        return self._git("rev-parse", f"{sha}^{{tree}}").decode().strip()

    def diff(self, old: str, new: str, binary: bool = False) -> bytes:
        """`git diff old new` (with --binary: applicable to any file)."""
        return self._git("diff", *(["--binary"] if binary else []), old, new)

    def archive(self, sha: str) -> bytes:
        """The commit's files as an uncompressed tar (what a sandbox extracts)."""
        return self._git("archive", "--format=tar", sha)

    def read_files(self, sha: str) -> dict[str, bytes]:
        with self._read_lock:
            return self._read_files(sha)

    def _read_files(self, sha: str) -> dict[str, bytes]:
        out: dict[str, bytes] = {}
        for blob in self.repo.commit(sha).tree.traverse():
            if blob.type == "blob":  # type: ignore[union-attr]
                out[blob.path] = blob.data_stream.read()  # type: ignore[union-attr]
        return out
