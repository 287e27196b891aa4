"""Per-evaluation overhead of the process sandbox, beside a bare interpreter start, measured in one run.

An evaluation here is one sandbox run of one instance of a trivial evaluator: copy the task, extract the
candidate archive, start the trusted harness, spawn the untrusted child, judge, parse the result document.
Prints a table of p50/p95 (ms) and the ratio of each to a bare `python -c pass`.

    .venv/bin/python scripts/bench_sandbox.py [--runs 50] [--json]
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

from evolver.sandbox.base import SandboxJob, SandboxLimits
from evolver.sandbox.process import ProcessSandbox

EVALUATE = """from evolver_harness import report
def prepare(instance):
    return {"x": 1}
def produce(inputs):
    import sol
    return sol.f(inputs["x"])
def judge(instance, inputs, output, usage):
    return report(instance, 1.0 if output == 2 else 0.0)
"""


def _archive() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        data = b"def f(x):\n    return 2 * x\n"
        info = tarfile.TarInfo("sol.py")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, round(q * (len(values) - 1)))]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        task = Path(tmp)
        (task / "evaluate.py").write_text(EVALUATE)
        sandbox = ProcessSandbox()
        job = SandboxJob(mode="python", archive=_archive(), task_root=task, task_files=(task / "evaluate.py",),
                         instances=("i1",), limits=SandboxLimits(timeout_s=10, memory_mb=512))
        variants = {
            "bare python -c pass": lambda: subprocess.run([sys.executable, "-c", "pass"], check=True),
            "bare python -I -S -c pass": lambda: subprocess.run([sys.executable, "-I", "-S", "-c", "pass"],
                                                                check=True),
            "process sandbox, 1 instance": lambda: _check(sandbox.run(job)),
        }
        times: dict[str, list[float]] = {k: [] for k in variants}
        for k in variants:  # warm-up
            variants[k]()
        # Interleaved, so drift of the machine affects every variant alike.
        for _ in range(args.runs):
            for k, fn in variants.items():
                t0 = time.perf_counter()
                fn()
                times[k].append((time.perf_counter() - t0) * 1000)
    base = statistics.median(times["bare python -c pass"])
    rows = [{"what": k, "p50_ms": round(statistics.median(v), 1), "p95_ms": round(_pct(v, 0.95), 1),
             "ratio_p50_to_bare": round(statistics.median(v) / base, 2)} for k, v in times.items()]
    if args.json:
        print(json.dumps({"runs": args.runs, "candidate_user": sandbox.identity_note, "rows": rows}, indent=2))
        return 0
    print(f"runs: {args.runs} each, interleaved; {sandbox.identity_note}")
    print(f"{'what':32} {'p50 ms':>8} {'p95 ms':>8} {'x bare':>7}")
    for r in rows:
        print(f"{r['what']:32} {r['p50_ms']:8.1f} {r['p95_ms']:8.1f} {r['ratio_p50_to_bare']:7.2f}")
    return 0


def _check(run) -> None:
    if not run.ok or run.payload["results"][0]["status"] != "ok":
        raise SystemExit(f"sandbox run failed: {run.error or run.payload}")


if __name__ == "__main__":
    sys.exit(main())
