"""Evaluator of the ENAMEL task: make each HumanEval function faster than its HumanEval+ canonical solution
while keeping it correct; scored by ENAMEL's efficiency measure against expert reference solutions.

Loaded in two processes:

* trusted harness: `prepare` (the correctness inputs), `serve` (generates the efficiency inputs and times the
  expert reference, then serves the child; efficiency.py) and `judge` (expected outputs from the reference,
  ENAMEL's checker, the eff score from the server's clock). The candidate's files are never imported here.
* untrusted child: `produce(inputs, channel)` imports the candidate's module for the problem, runs it on the
  correctness inputs, then on the efficiency cases the server hands out over the channel.
"""

from __future__ import annotations

import ast
import contextlib
import gc
import gzip
import hashlib
import importlib
import importlib.util
import io
import json
import signal
import sys
import tokenize
from functools import lru_cache
from pathlib import Path
from types import ModuleType
from typing import Any

from evolver_harness import candidate_dir, report

TASK_DIR = Path(__file__).resolve().parent
DATA_FILE = TASK_DIR / "data" / "problems.json.gz"
LEVEL0_TESTS = 8  # ENAMEL's level-0 tests (weight 0 in eff): here part of the correctness check
MAX_SHOWN = 240  # characters of an input or output shown in feedback
# Outputs whose encoding is longer travel as a digest (HumanEval+ inputs of some problems have outputs of
# megabytes, e.g. tri(n) for large n), compared with the expected output's: only for problems whose checker is
# plain equality of type and value, where equal encodings and accepted outputs coincide.
DIGEST_OVER = 1 << 16
EXACT_CHECKER = "def __check(input, answer, output):\n    return type(output) == type(answer) and output == answer\n"


def _load_by_path(name: str) -> ModuleType:
    """A helper of this task folder, by path: nothing on the candidate's sys.path can stand in for it."""
    if name in sys.modules and getattr(sys.modules[name], "__file__", "") == str(TASK_DIR / f"{name}.py"):
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, TASK_DIR / f"{name}.py")
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {name}.py from the task folder")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


# ---------------------------------------------------------------------------------------------------------
# Data (trusted side)


@lru_cache(maxsize=1)
def problems() -> dict[str, dict[str, Any]]:
    doc = json.loads(gzip.decompress(DATA_FILE.read_bytes()))
    gc.freeze()  # millions of long-lived objects: keep them out of every later collection
    return {p["task_id"]: p for p in doc["problems"]}


def problem(instance: str) -> dict[str, Any]:
    found = problems().get(instance)
    if found is None:
        raise KeyError(f"unknown ENAMEL problem {instance!r}; expected an id like 'HumanEval/0' listed in "
                       "instances.toml")
    return found


def correctness_inputs(p: dict[str, Any]) -> list[list[Any]]:
    """HumanEval+ base and plus inputs, then ENAMEL's level-0 tests (small and tricky: empty inputs, edge
    values), all as argument lists."""
    gen = _load_by_path("enamel_inputs")
    eff = _load_by_path("efficiency")
    scope = gen.generator_namespace(p["prompt"], p["generator"])
    level0 = [list(gen.generate(scope, p["levels"][0], 0, cid, eff.input_seed(p["task_id"], 0, cid, 0, 0)))
              for cid in range(LEVEL0_TESTS)]
    return [list(a) for a in p["inputs"]] + level0


def _candidate_file(module: str) -> Path:
    # The process sandbox puts the candidate's tree beside the task's copy (candidate/ and task/).
    return TASK_DIR.parent / "candidate" / f"{module}.py"


_LAYOUT = {tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT, tokenize.ENDMARKER}


def code_tokens(source: str) -> int:
    """Python tokens of a module without comments, docstrings and layout: the size objective (read as text,
    never run)."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return len(source.split())
    docstrings = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(
                    first.value.value, str):
                docstrings.add((first.lineno, first.col_offset))
    tokens = tokenize.generate_tokens(io.StringIO(source).readline)
    return sum(1 for tok in tokens if tok.type not in _LAYOUT and not (tok.type == tokenize.STRING and tok.start
                                                                       in docstrings))


# Read once when the harness loads this evaluator, before any candidate process runs: the candidate may
# rewrite its own files while it runs, so later reads could not be trusted.
_SOURCE_SNAPSHOT: dict[str, str] = {}
if candidate_dir() and __name__ != "__main__":
    for _path in Path(candidate_dir()).glob("he*.py"):
        with contextlib.suppress(OSError):
            _SOURCE_SNAPSHOT[_path.stem] = _path.read_text(encoding="utf-8", errors="replace")


# ---------------------------------------------------------------------------------------------------------
# Trusted side 1: what the candidate sees; the efficiency server


def prepare(instance: str) -> dict[str, Any]:
    p = problem(instance)
    codec = _load_by_path("typed_json")
    return {"task_id": instance, "module": p["module"], "entry_point": p["entry_point"],
            "cases": codec.encode(correctness_inputs(p)),
            "digest_over": DIGEST_OVER if p["checker"] == EXACT_CHECKER else None}


def _numbers_as_python_compares(doc: Any) -> Any:
    """Python's == makes True == 1 == 1.0 inside containers (the checker compares only the outer types): the
    digest must not tell them apart either."""
    if isinstance(doc, bool):
        return int(doc)
    if isinstance(doc, float) and doc.is_integer():
        return int(doc)
    if isinstance(doc, list):
        return [_numbers_as_python_compares(v) for v in doc]
    if isinstance(doc, dict):
        return {k: _numbers_as_python_compares(v) for k, v in doc.items()}
    return doc


def digest(encoded: Any) -> tuple[str, str]:
    """(sha256, text) of an encoded value's canonical JSON, numbers compared as Python's == does; the outer
    type counts, as in the checker."""
    text = json.dumps(_numbers_as_python_compares(encoded), sort_keys=True, separators=(",", ":"))
    outer = type(encoded).__name__ + (f":{next(iter(encoded))}" if isinstance(encoded, dict) else "")
    return hashlib.sha256((outer + "|" + text).encode()).hexdigest(), text


def serve(instance: str, inputs: Any) -> Any:
    return _load_by_path("efficiency").EfficiencyServer(problem(instance))


# ---------------------------------------------------------------------------------------------------------
# Untrusted side


class CaseTimeout(BaseException):
    """A BaseException: a candidate's `except Exception` must not swallow the time limit."""


def _on_alarm(signum: int, frame: Any) -> None:
    raise CaseTimeout


def _call_all(fn: Any, batch: list[Any], codec: ModuleType) -> list[Any]:
    return [codec.encode(fn(*args)) for args in batch]


def _efficiency(channel: Any, fn: Any, codec: ModuleType) -> Any:
    """Ask for cases until the server is done; returns the last batch answered (for profiling)."""
    profiler = sys.getprofile()  # evolver's cProfile, when profiling: paused while the clock runs
    pause = getattr(profiler, "disable", None)
    last = None
    reply = channel.ask({"op": "next"})
    while "args" in reply:
        encoded = reply["args"]
        batch = codec.decode(encoded)
        limit = float(reply["limit_s"])
        if callable(pause):
            pause()
        channel.ask({"op": "go"})
        gc.disable()  # as for the reference's timing: a collection of this process's heap is not the candidate's cost
        signal.setitimer(signal.ITIMER_PROF, limit)  # CPU time, as the server counts it
        try:
            message: dict[str, Any] = {"op": "answer", "outputs": _call_all(fn, batch, codec)}
        except CaseTimeout:
            message = {"op": "answer", "timeout": True}
        except Exception as exc:  # noqa: BLE001 - the server reports it as the candidate's failure
            message = {"op": "answer", "raised": f"{type(exc).__name__}: {exc}"[:500]}
        finally:
            signal.setitimer(signal.ITIMER_PROF, 0)
        reply = channel.ask(message)
        gc.enable()
        if callable(pause):
            profiler.enable()
        if message.get("outputs") is not None:
            last = (encoded, limit)
    return last


def _profile_largest(fn: Any, last: Any, codec: ModuleType) -> None:
    """One untimed run on the largest inputs answered, for the profile's hot spots (the timed runs are not
    profiled: the profiler would slow the candidate but not the reference)."""
    encoded, limit = last
    signal.setitimer(signal.ITIMER_PROF, limit)
    try:
        _call_all(fn, codec.decode(encoded), codec)
    except (CaseTimeout, Exception):  # noqa: BLE001 - only the profile matters here
        pass
    finally:
        signal.setitimer(signal.ITIMER_PROF, 0)


def produce(inputs: dict[str, Any], channel: Any = None) -> dict[str, Any]:
    codec = _load_by_path("typed_json")
    module = importlib.import_module(inputs["module"])  # the candidate's file, first on sys.path here
    fn = getattr(module, inputs["entry_point"], None)
    if not callable(fn):
        raise TypeError(f"{inputs['module']}.py must define the function {inputs['entry_point']}(...); "
                        f"found {type(fn).__name__}")
    signal.signal(signal.SIGPROF, _on_alarm)
    outputs: list[dict[str, Any]] = []
    digest_over = inputs.get("digest_over")
    for args in codec.decode(inputs["cases"]):
        try:
            encoded = codec.encode(fn(*args))
        except Exception as exc:  # noqa: BLE001 - reported with the input that caused it
            outputs.append({"raised": f"{type(exc).__name__}: {exc}"[:500]})
            continue
        if digest_over is not None:
            sha, text = digest(encoded)
            if len(text) > digest_over:
                outputs.append({"digest": sha, "preview": text[:MAX_SHOWN]})
                continue
        outputs.append({"value": encoded})
    if channel is not None:
        last = _efficiency(channel, fn, codec)
        if last is not None and sys.getprofile() is not None:
            _profile_largest(fn, last, codec)
    return {"outputs": outputs}


# ---------------------------------------------------------------------------------------------------------
# Trusted side 2: the judge


def show(value: Any, limit: int = MAX_SHOWN) -> str:
    text = repr(value)
    if len(text) <= limit:
        return text
    size = f" ({type(value).__name__} of {len(value)})" if hasattr(value, "__len__") else ""
    return text[:limit] + f"...{size}"


def call_text(entry_point: str, args: Any) -> str:
    return f"{entry_point}({', '.join(show(a, MAX_SHOWN // 2) for a in args)})"


def check_correctness(p: dict[str, Any], ref: Any, output: Any) -> tuple[int, int, str]:
    """(passed, total, feedback on the first failure) for the candidate's correctness outputs."""
    codec = _load_by_path("typed_json")
    cases = correctness_inputs(p)
    got = output.get("outputs") if isinstance(output, dict) else None
    if not isinstance(got, list) or len(got) != len(cases):
        return 0, len(cases), f"produce must return one output per input ({len(cases)}); got {show(got, 80)}"
    n_plus = len(p["inputs"])
    passed, first = 0, ""
    for k, (args, item) in enumerate(zip(cases, got, strict=True)):
        where = f"HumanEval+ input #{k}" if k < n_plus else f"ENAMEL level-0 test {k - n_plus}"
        expected = ref.fn(*codec.decode(codec.encode(args)))
        if isinstance(item, dict) and "raised" in item:
            verdict = f"raised {str(item['raised'])[:300]}"
        elif isinstance(item, dict) and "digest" in item and p["checker"] == EXACT_CHECKER:
            if item["digest"] == digest(codec.encode(expected))[0]:
                passed += 1
                continue
            verdict = f"returned a different value, beginning {str(item.get('preview'))[:MAX_SHOWN]}..."
        else:
            try:
                value = codec.decode(item.get("value")) if isinstance(item, dict) else None
            except (ValueError, TypeError, RecursionError):
                value, verdict = None, "returned a value that could not be decoded"
            else:
                if ref.accepts(args, expected, value):
                    passed += 1
                    continue
                verdict = f"returned {show(value)}"
        if not first:
            first = (f"wrong on {where}: {call_text(p['entry_point'], args)}\n  expected: {show(expected)}\n"
                     f"  got: {verdict}")
    return passed, len(cases), first


def efficiency_feedback(server: Any) -> tuple[float, str]:
    lines = []
    for row in server.levels():
        head = f"level {row['level']} (size {row['size']}, reference {row['ref_s'] * 1e3:.3f} ms per input)"
        if row["status"] == "ok":
            ratio = row["time_s"] / row["ref_s"]
            lines.append(f"{head}: {ratio:.2f}x the reference's time, eff {row['eff']:.3f}")
        elif row["status"] == "timeout":
            lines.append(f"{head}: TIME LIMIT EXCEEDED (limit {server.timeout_s * 1e3:.3f} ms per input, twice "
                         "the reference's slowest level): likely a worse complexity than the reference")
        else:
            lines.append(f"{head}: not reached")
    return server.eff(), "\n".join(lines)


def judge(instance: str, inputs: Any, output: Any, usage: dict[str, float], session: Any = None) -> dict[str, Any]:
    p = problem(instance)
    eff_mod = _load_by_path("efficiency")
    ref = session.ref if session is not None else eff_mod.Reference(p)
    source = _SOURCE_SNAPSHOT.get(p["module"])
    size = float(code_tokens(source)) if source is not None else 0.0
    passed, total, wrong = check_correctness(p, ref, output)
    correctness = passed / total if total else 0.0
    objectives = {"correctness": correctness, "code_tokens": size}
    if wrong:
        return report(instance, 0.0, feedback=f"{wrong}\ncorrect on {passed}/{total} inputs", eff=0.0,
                      **objectives)
    if session is None:
        return report(instance, 0.0, feedback="efficiency not measured (no session channel)", eff=0.0,
                      **objectives)
    failure = session.failure()
    if failure is not None or session.stopped != "complete":
        detail = "the child stopped asking for efficiency cases" if failure is None else _eff_failure(p, failure)
        # One more input failed (an efficiency input), or the run could not be checked.
        return report(instance, 0.0, feedback=f"efficiency run failed: {detail}", eff=0.0,
                      **{**objectives, "correctness": passed / (total + 1)})
    eff, text = efficiency_feedback(session)
    feedback = (f"eff {eff:.3f} (ENAMEL's measure: 1.0 = as fast as the expert reference on every level; "
                f"weights 3/3/4)\n{text}\ncorrect on all {total} inputs")
    return report(instance, eff, feedback=feedback, eff=eff, **objectives)


def _eff_failure(p: dict[str, Any], case: Any) -> str:
    where = f"level {case.level} test {case.cid} (size {case.size})"
    if case.verdict == "wrong":
        args = case.args[case.wrong_index]
        return (f"wrong on ENAMEL {where}: {call_text(p['entry_point'], args)}\n"
                f"  expected: {show(case.expected[case.wrong_index])}\n  got: {show(case.got)}")
    if case.verdict == "raised":
        return f"raised on ENAMEL {where}: {case.detail}"
    return f"protocol error on {where}: {case.detail}"


__all__ = ["judge", "prepare", "produce", "serve"]
