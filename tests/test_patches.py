"""Edits from LLM replies (evolver.patches): the three forms, tolerant but never ambiguous matching, validation,
and messages precise enough for a repair turn. Pure functions: no git, no sandbox, no network."""

from __future__ import annotations

from pathlib import Path

import pytest

from evolver.patches import Edit, PatchResult, apply_reply, check_path, parse_reply, truncated
from evolver.task import load_task

ROOT = Path(__file__).resolve().parent.parent
JOBSHOP = ROOT / "tasks" / "jobshop"

SOL = """\
import math


def f(x):
    if x > 0:
        return x * 2
    return 0


def g(y):
    return math.sqrt(y)
"""

FILES = {"sol.py": SOL, "util.py": "def h():\n    return 1\n", "README.md": "# notes\n"}


def py_mutable(path: str) -> bool:
    return path.endswith(".py")


def apply(reply: str, files: dict[str, str] | None = None) -> PatchResult:
    return apply_reply(reply, FILES if files is None else files, py_mutable, globs=["**/*.py"])


def block(path: str, search: str, replace: str) -> str:
    return f"{path}\n<<<<<<< SEARCH\n{search}=======\n{replace}>>>>>>> REPLACE\n"


def only_error(result: PatchResult, kind: str) -> str:
    assert [e.kind for e in result.errors] == [kind], result.feedback()
    assert not result.ok and not result.noop
    return result.errors[0].message


# -- the three forms ---------------------------------------------------------------------------------------------

def test_search_replace_block_with_prose_and_fence_applies() -> None:
    reply = ("I double less.\n\n" + "sol.py\n```python\n"
             + "<<<<<<< SEARCH\n        return x * 2\n=======\n        return x * 3\n>>>>>>> REPLACE\n```\nDone.\n")
    result = apply(reply)
    assert result.ok and result.blocks == 1 and not result.errors
    assert result.changes == {"sol.py": SOL.replace("x * 2", "x * 3")}
    assert result.feedback().startswith("Applied 1 edit")


@pytest.mark.parametrize("header", ["`sol.py`\n", "```python\nsol.py\n", "sol.py\n```python\n", "```python sol.py\n",
                                    "./sol.py\n"])
def test_block_path_forms(header: str) -> None:
    reply = header + "<<<<<<< SEARCH\n    return 0\n=======\n    return -1\n>>>>>>> REPLACE\n"
    result = apply(reply + ("```\n" if "```" in header else ""))
    assert result.ok, result.feedback()
    assert result.changes == {"sol.py": SOL.replace("return 0", "return -1")}


def test_unified_diff_applies_by_context_despite_wrong_line_numbers() -> None:
    reply = """```diff
--- a/sol.py
+++ b/sol.py
@@ -40,3 +40,3 @@
 def g(y):
-    return math.sqrt(y)
+    return math.sqrt(abs(y))
```
"""
    result = apply(reply)
    assert result.ok, result.feedback()
    assert result.changes == {"sol.py": SOL.replace("sqrt(y)", "sqrt(abs(y))")}


def test_unified_diff_line_number_breaks_a_tie_only_between_exact_matches() -> None:
    text = "a = 1\nb = 2\n\na = 1\nb = 2\n"
    diff = "--- a/d.py\n+++ b/d.py\n@@ -{n},2 +{n},2 @@\n a = 1\n-b = 2\n+b = 3\n"
    result = apply(diff.format(n=4), {"d.py": text})
    assert result.ok and result.changes == {"d.py": "a = 1\nb = 2\n\na = 1\nb = 3\n"}
    # A line number that points at neither occurrence decides nothing: ambiguous.
    assert "matches 2 places" in only_error(apply(diff.format(n=2), {"d.py": text}), "ambiguous")


def test_unified_diff_creates_and_deletes_files() -> None:
    reply = ("--- /dev/null\n+++ b/pkg/new.py\n@@ -0,0 +1,2 @@\n+def k():\n+    return 2\n"
             "--- a/util.py\n+++ /dev/null\n@@ -1,2 +0,0 @@\n-def h():\n-    return 1\n")
    result = apply(reply)
    assert result.ok, result.feedback()
    assert result.changes == {"pkg/new.py": "def k():\n    return 2\n", "util.py": None}


@pytest.mark.parametrize("opening", ["```python util.py\n", "util.py:\n```python\n", "### util.py\n\n```python\n",
                                     "**util.py**\n```\n"])
def test_whole_file_in_a_named_fence(opening: str) -> None:
    reply = f"The new file:\n\n{opening}def h():\n    return 42\n```\n"
    result = apply(reply)
    assert result.ok, result.feedback()
    assert result.changes == {"util.py": "def h():\n    return 42\n"}


def test_whole_file_fences_are_ignored_when_the_reply_has_blocks() -> None:
    reply = ("For illustration:\n```python util.py\ndef h():\n    return 'clobbered'\n```\n"
             + block("sol.py", "    return 0\n", "    return 1\n"))
    result = apply(reply)
    assert result.ok and set(result.changes) == {"sol.py"}


def test_unnamed_fences_are_no_edits() -> None:
    message = only_error(apply("Try this:\n```python\nprint(1)\n```\n"), "parse")
    assert "SEARCH/REPLACE" in message and "found none" in message


# -- several blocks and files ------------------------------------------------------------------------------------

def test_several_blocks_and_files_apply_in_order() -> None:
    reply = (block("sol.py", "    return 0\n", "    return -1\n")
             # the same file again, following the previous block directly: the path carries over
             + "<<<<<<< SEARCH\n    return -1\n=======\n    return -2\n>>>>>>> REPLACE\n\n"
             + block("util.py", "    return 1\n", "    return 3\n")
             + block("sol.py", "def g(y):\n", "def g(y: float):\n"))
    result = apply(reply)
    assert result.ok and result.blocks == 4, result.feedback()
    assert result.changes["sol.py"] == SOL.replace("return 0", "return -2").replace("g(y)", "g(y: float)")
    assert result.changes["util.py"] == "def h():\n    return 3\n"


# -- exact, then whitespace-tolerant -----------------------------------------------------------------------------

def test_indentation_offset_is_tolerated_and_replacement_reindented() -> None:
    # The LLM dropped the function's indentation; the replacement moves back by the same offset.
    reply = block("sol.py", "if x > 0:\n    return x * 2\nreturn 0\n",
                  "if x > 1:\n    return x * 2\nelif x < 0:\n    return -x\nreturn 0\n")
    result = apply(reply)
    assert result.ok, result.feedback()
    assert "    if x > 1:\n        return x * 2\n    elif x < 0:\n        return -x\n    return 0\n" in \
        result.changes["sol.py"]


def test_relative_indentation_must_agree() -> None:
    reply = block("sol.py", "if x > 0:\nreturn x * 2\n", "pass\n")
    assert "matches nothing" in only_error(apply(reply), "no_match")


def test_trailing_spaces_and_crlf_in_the_reply_are_tolerated() -> None:
    reply = block("sol.py", "    return 0   \n", "    return 5\n").replace("\n", "\r\n")
    result = apply(reply)
    assert result.ok, result.feedback()
    assert result.changes == {"sol.py": SOL.replace("return 0", "return 5")}


def test_crlf_file_keeps_its_line_endings() -> None:
    files = {"w.py": "a = 1\r\nb = 2\r\n"}
    result = apply(block("w.py", "b = 2\n", "b = 3\nc = 4\n"), files)
    assert result.changes == {"w.py": "a = 1\r\nb = 3\r\nc = 4\r\n"}


def test_ambiguous_match_is_rejected_with_count_and_lines() -> None:
    files = {"d.py": "x = 0\nx = 0\ny = 1\nx = 0\n"}
    message = only_error(apply(block("d.py", "x = 0\n", "x = 9\n"), files), "ambiguous")
    assert "matches 3 places" in message and "lines 1, 2, 4" in message
    assert "reply line 2" in message
    # Whitespace tolerance never turns one exact match into an ambiguity.
    result = apply(block("d.py", "y = 1\n", "y = 2\n"), {"d.py": "y = 1\nif y:\n    y = 1\n"})
    assert result.ok and result.changes == {"d.py": "y = 2\nif y:\n    y = 1\n"}


def test_no_match_quotes_the_search_and_the_closest_region_with_line_numbers() -> None:
    reply = block("sol.py", "def g(y):\n    return math.sqr(y)\n", "pass\n")
    message = only_error(apply(reply), "no_match")
    assert "sol.py" in message and "|     return math.sqr(y)" in message
    assert "Closest region of sol.py (lines 10-11" in message
    assert "    10 | def g(y):" in message and "    11 |     return math.sqrt(y)" in message


# -- validation --------------------------------------------------------------------------------------------------

def test_non_mutable_path_is_rejected_naming_the_globs() -> None:
    message = only_error(apply(block("README.md", "# notes\n", "# more\n")), "not_mutable")
    assert "README.md" in message and "'**/*.py'" in message


def test_bound_task_is_mutable_names_the_task_globs() -> None:
    task = load_task(JOBSHOP)
    result = apply_reply(block("jobshop_sim.py", "x\n", "y\n"), {}, task.is_mutable)
    assert "'dispatch.py'" in only_error(result, "not_mutable")


@pytest.mark.parametrize("path", ["../x.py", "/etc/passwd", "a\\b.py", "pkg/../../x.py"])
def test_escaping_paths_are_rejected(path: str) -> None:
    result = apply_reply(block(path, "", "x = 1\n"), FILES, lambda p: True)
    assert path in only_error(result, "bad_path")
    assert check_path(path) is not None and check_path("pkg/x.py") is None


def test_syntax_error_reported_with_line() -> None:
    reply = block("sol.py", "def g(y):\n", "def g(y:\n")
    message = only_error(apply(reply), "syntax")
    assert message.startswith("sol.py: not valid Python after the edits: line 10: ")
    assert "libcst: line" in message and "    10 | def g(y:" in message


def test_no_op_is_not_an_error() -> None:
    result = apply(block("sol.py", "    return 0\n", "    return 0\n"))
    assert result.noop and not result.errors and not result.ok and result.changes == {}
    assert "nothing changed" in result.feedback()


def test_create_new_file_and_reject_create_on_existing() -> None:
    result = apply(block("pkg/extra.py", "", "VALUE = 3\n"))
    assert result.ok and result.changes == {"pkg/extra.py": "VALUE = 3\n"}
    message = only_error(apply(block("util.py", "", "VALUE = 3\n")), "create_exists")
    assert "util.py" in message and "already exists" in message


def test_edit_of_missing_file_names_the_editable_files() -> None:
    message = only_error(apply(block("nope.py", "a\n", "b\n")), "no_match")
    assert "does not exist" in message and "sol.py, util.py" in message


# -- structure errors, collection, feedback ----------------------------------------------------------------------

@pytest.mark.parametrize("above", ["Change this:", "## Edits"])
def test_marker_without_path_names_the_line(above: str) -> None:
    reply = f"{above}\n\n<<<<<<< SEARCH\n    return 0\n=======\n    return 1\n>>>>>>> REPLACE\n"
    message = only_error(apply(reply), "parse")
    assert message.startswith("reply line 3: expected the file path") and repr(above) in message


def test_unterminated_block_is_a_parse_error_and_truncated() -> None:
    reply = "sol.py\n<<<<<<< SEARCH\n    return 0\n=======\n    return 1\n"
    message = only_error(apply(reply), "parse")
    assert "reply line 2" in message and "'>>>>>>> REPLACE'" in message and "end of the reply" in message
    assert truncated(reply)


def test_all_errors_of_a_reply_are_collected_in_reply_order() -> None:
    reply = (block("sol.py", "    return 0\n", "    return 1\n")  # fine, but its file has another error
             + block("sol.py", "nothing like this\n", "x\n")
             + block("README.md", "# notes\n", "x\n")
             + block("/etc/passwd", "root\n", "x\n")
             + block("util.py", "    return 1\n", "    return 2\n")
             + "sol.py\n<<<<<<< SEARCH\n")
    result = apply(reply)
    assert [e.kind for e in result.errors] == ["no_match", "not_mutable", "bad_path", "parse"]
    assert result.changes == {"util.py": "def h():\n    return 2\n"}  # a file with any error is left out
    feedback = result.feedback()
    assert feedback.startswith("None of your edits were applied: 4 problems")
    assert all(e.message in feedback for e in result.errors)
    assert "1. [no_match]" in feedback and "4. [parse]" in feedback


@pytest.mark.parametrize(("reply", "cut"), [
    ("sol.py\n<<<<<<< SEARCH\n    return 0\n", True),
    ("sol.py\n<<<<<<< SEARCH\n    return 0\n=======\n", True),
    ("```python sol.py\ndef f(x):\n", True),
    ("```diff\n--- a/sol.py\n+++ b/sol.py\n@@ -1 +1 @@\n", True),
    ("```python\nx = 1\n```\nand\n~~~\ny\n~~~\n", False),
    (block("README.md", "```\nfence in content\n", "done\n"), False),  # fences inside a block are content
    ("plain prose", False),
])
def test_truncated(reply: str, cut: bool) -> None:
    assert truncated(reply) is cut


def test_parse_reply_records() -> None:
    parsed = parse_reply(block("sol.py", "a\n", "b\nc\n") + "--- a/u.py\n+++ b/u.py\n@@ -3,1 +3,1 @@\n-x\n+y\n")
    assert not parsed.errors
    assert parsed.edits == (Edit("sol.py", "replace", ("a",), ("b", "c"), 2, "block"),
                            Edit("u.py", "replace", ("x",), ("y",), 10, "diff", 2))


# -- a realistic edit --------------------------------------------------------------------------------------------

def test_jobshop_seed_spt_to_mwkr() -> None:
    seed = (JOBSHOP / "seed" / "dispatch.py").read_text()
    task = load_task(JOBSHOP)
    reply = """The seed ranks by duration (SPT). The makespan is set by the job that finishes last, so keep the jobs
with the most work left moving: most work remaining first (MWKR), lowest value wins, hence the minus sign.

dispatch.py
```python
<<<<<<< SEARCH
    \"\"\"Shortest processing time first (SPT).\"\"\"
    return duration
=======
    \"\"\"Most work remaining first (MWKR); shorter operations first among equals.\"\"\"
    return -work_remaining + 1e-6 * duration
>>>>>>> REPLACE
```
"""
    result = apply_reply(reply, {"dispatch.py": seed}, task.is_mutable)
    assert result.ok, result.feedback()
    child = result.changes["dispatch.py"]
    assert child is not None and "return duration" not in child
    assert child.endswith("    return -work_remaining + 1e-6 * duration\n")
    assert child.replace("Most work remaining first (MWKR); shorter operations first among equals.",
                         "Shortest processing time first (SPT).").replace(
        "return -work_remaining + 1e-6 * duration", "return duration") == seed
    namespace: dict[str, object] = {}
    exec(compile(child, "dispatch.py", "exec"), namespace)
    priority = namespace["priority"]
    features = dict(duration=5.0, ops_remaining=3.0, job_work_total=40.0, job_ready=0.0, time=10.0,
                    machine_load_remaining=50.0, next_duration=4.0, next_machine_load=20.0, next_machine_ready=0.0)
    assert priority(work_remaining=30.0, **features) < priority(work_remaining=10.0, **features)  # type: ignore[operator]
