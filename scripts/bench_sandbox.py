"""Per-evaluation overhead of each sandbox backend, measured side by side in one run.

Workloads: one instance of a trivial evaluator, and a 20-test pytest suite. Backends: the process sandbox, a
one-shot container per evaluation (create, fill, start, wait, remove: `isolation = "strict"`), and the warm
pool with its in-container fork-server. "bare" runs the same work with no sandbox (an interpreter start, or
pytest on the host); overhead = p50 - bare p50. Then throughput with 2 workers (evaluations per second).

    .venv/bin/python scripts/bench_sandbox.py [--runs 50] [--throughput 40] [--json]
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
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from evolver.sandbox.base import Sandbox, SandboxJob, SandboxLimits, SandboxRun
from evolver.sandbox.docker import DockerSandbox
from evolver.sandbox.docker_host import connect
from evolver.sandbox.images import build_base_image
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
TESTS = "import sol\n\n" + "".join(f"def test_{k}():\n    assert sol.f({k}) == {2 * k}\n\n" for k in range(20))
SOL = b"def f(x):\n    return 2 * x\n"


def _archive() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("sol.py")
        info.size = len(SOL)
        tar.addfile(info, io.BytesIO(SOL))
    return buf.getvalue()


def _pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, round(q * (len(values) - 1)))]


def _check(run: SandboxRun) -> None:
    if not run.ok or any(r["status"] != "ok" for r in run.payload["results"]):
        raise SystemExit(f"benchmark evaluation failed: {run.error or run.payload['results']}")


def _jobs(task: Path) -> dict[str, SandboxJob]:
    (task / "evaluate.py").write_text(EVALUATE)
    (task / "tests").mkdir()
    (task / "tests" / "test_sol.py").write_text(TESTS)
    limits = SandboxLimits(timeout_s=10, memory_mb=512)
    archive = _archive()
    return {
        "trivial evaluator": SandboxJob(mode="python", archive=archive, task_root=task,
                                        task_files=(task / "evaluate.py",), instances=("i1",), limits=limits),
        "pytest, 20 tests": SandboxJob(mode="pytest", archive=archive, task_root=task,
                                       task_files=(task / "tests" / "test_sol.py",),
                                       instances=tuple(f"test_sol.py::test_{k}" for k in range(20)),
                                       limits=limits),
    }


def _bare(workload: str, task: Path, cand: Path) -> Callable[[], None]:
    if workload == "trivial evaluator":
        return lambda: subprocess.run([sys.executable, "-I", "-S", "-c", "pass"], check=True)
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(task / "tests")]
    return lambda: subprocess.run(cmd, check=True, cwd=cand, capture_output=True,
                                  env={"PYTHONPATH": str(cand), "PATH": "/usr/bin:/bin"})


def _time(fn: Callable[[], None]) -> float:
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1000


def _throughput(sandbox: Sandbox, job: SandboxJob, n: int) -> float:
    with ThreadPoolExecutor(max_workers=2) as pool:
        list(pool.map(lambda _: _check(sandbox.run(job)), range(2)))  # warm both workers
        t0 = time.perf_counter()
        list(pool.map(lambda _: _check(sandbox.run(job)), range(n)))
    return n / (time.perf_counter() - t0)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--throughput", type=int, default=40, help="evaluations per backend in the 2-worker test")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    client = connect()
    if client is None:
        raise SystemExit("no Docker engine answers: start one (scripts/start-docker) to compare backends")
    image, _ = build_base_image(client)
    backends: dict[str, Sandbox] = {
        "process": ProcessSandbox(),
        "docker one-shot": DockerSandbox(client, image, isolation="strict", run_label="bench"),
        "docker warm pool": DockerSandbox(client, image, run_label="bench", recycle_after=10**6),
    }
    rows, tput = [], []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            task, cand = Path(tmp) / "task", Path(tmp) / "cand"
            task.mkdir()
            cand.mkdir()
            (cand / "sol.py").write_bytes(SOL)
            for workload, job in _jobs(task).items():
                variants: dict[str, Callable[[], None]] = {"bare": _bare(workload, task, cand)}
                for name, sandbox in backends.items():
                    variants[name] = (lambda s=sandbox, j=job: _check(s.run(j)))
                for fn in variants.values():
                    fn()  # warm-up: image caches, the pool's first container
                times: dict[str, list[float]] = {k: [] for k in variants}
                for _ in range(args.runs):  # interleaved: drift of the machine affects every variant alike
                    for k, fn in variants.items():
                        times[k].append(_time(fn))
                bare = statistics.median(times["bare"])
                oneshot = statistics.median(times["docker one-shot"])
                for k, v in times.items():
                    p50 = statistics.median(v)
                    rows.append({"workload": workload, "backend": k, "p50_ms": round(p50, 1),
                                 "p95_ms": round(_pct(v, 0.95), 1),
                                 "overhead_p50_ms": round(p50 - bare, 1) if k != "bare" else 0.0,
                                 "one_shot_over_this": round(oneshot / p50, 2)})
                for name, sandbox in backends.items():
                    tput.append({"workload": workload, "backend": name, "workers": 2,
                                 "evals_per_s": round(_throughput(sandbox, job, args.throughput), 2)})
    finally:
        for sandbox in backends.values():
            sandbox.close()
    if args.json:
        print(json.dumps({"runs": args.runs, "latency": rows, "throughput": tput}, indent=2))
        return 0
    print(f"per evaluation, {args.runs} runs each, interleaved")
    print("| workload | backend | p50 ms | p95 ms | overhead p50 ms | one-shot p50 / this |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['workload']} | {r['backend']} | {r['p50_ms']} | {r['p95_ms']} | {r['overhead_p50_ms']} | "
              f"{r['one_shot_over_this']} |")
    print(f"\nthroughput, 2 workers, {args.throughput} evaluations each")
    print("| workload | backend | evaluations/s |")
    print("|---|---|---|")
    for t in tput:
        print(f"| {t['workload']} | {t['backend']} | {t['evals_per_s']} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
