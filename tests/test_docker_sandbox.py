"""The docker sandbox against a real engine: adversarial candidates in one warm pool.

Each attack runs as instance i7 of a batch with a good instance (i1); then a good candidate runs in the same
pool, which must be clean. These tests run whenever an engine is reachable and are skipped only when
EVOLVER_DOCKER=0 says so explicitly: a CI machine without an engine fails here instead of passing quietly.
"""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
import tarfile
import textwrap
import threading
import time
from pathlib import Path

import pytest
from conftest import DEFAULT_EVALUATE, GOOD_SOL
from test_sandbox_faults import PROBE_EVALUATE

from evolver.sandbox import ProcessSandbox, SandboxJob, SandboxLimits, resolve_backend
from evolver.sandbox.docker import DockerSandbox
from evolver.sandbox.docker_host import LABEL_PID, LABEL_RUN, LABEL_SANDBOX, MOUNT_BASE, connect, sweep_stale
from evolver.sandbox.images import build_base_image

if os.environ.get("EVOLVER_DOCKER") == "0":
    pytest.skip("EVOLVER_DOCKER=0: the docker sandbox tests are skipped on request", allow_module_level=True)



@pytest.fixture(scope="module")
def client():
    c = connect()
    if c is None:
        pytest.fail("no Docker engine answers (start one with scripts/start-docker, or set EVOLVER_DOCKER=0 to "
                    "skip these tests explicitly)")
    return c


@pytest.fixture(scope="module")
def image(client) -> str:
    tag, _built = build_base_image(client)
    return tag


@pytest.fixture(scope="module")
def pool(client, image):
    sandbox = DockerSandbox(client, image, run_label="tests", recycle_after=1000)
    yield sandbox
    sandbox.close()
    assert not ours(client), "containers left after close()"


def ours(client, run: str | None = None) -> list:
    labels = [f"{LABEL_SANDBOX}=1", f"{LABEL_PID}={os.getpid()}"] + ([f"{LABEL_RUN}={run}"] if run else [])
    return client.containers.list(all=True, filters={"label": labels})


def faulty(body: str, prelude: str = "") -> str:
    indented = "\n".join("        " + line for line in textwrap.dedent(body).strip("\n").splitlines())
    return f"{prelude}\ndef f(x):\n    if x == 7:\n{indented}\n    return x * 2\n"


def make_job(tmp_path: Path, sol: str, *, evaluate: str = DEFAULT_EVALUATE, instances=("i7", "i1"),
             timeout_s: float = 2.0, memory_mb: int = 256, output_limit_mb: int = 4,
             max_processes: int = 32) -> SandboxJob:
    task = tmp_path / f"task-{time.monotonic_ns()}"
    task.mkdir()
    (task / "evaluate.py").write_text(textwrap.dedent(evaluate))
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        data = textwrap.dedent(sol).encode()
        info = tarfile.TarInfo("sol.py")
        info.size, info.mode = len(data), 0o644
        tar.addfile(info, io.BytesIO(data))
    limits = SandboxLimits(timeout_s=timeout_s, memory_mb=memory_mb, output_limit_mb=output_limit_mb,
                           max_processes=max_processes)
    return SandboxJob(mode="python", archive=buf.getvalue(), task_root=task, task_files=(task / "evaluate.py",),
                      instances=tuple(instances), limits=limits)


def results_of(run) -> dict[str, dict]:
    assert run.ok, (run.error, run.stderr_tail)
    return {r["instance"]: r for r in run.payload["results"]}


def probe(result: dict) -> dict:
    assert result["feedback"].startswith("PROBE "), (result["status"], result["feedback"])
    return json.loads(result["feedback"][len("PROBE "):])


@pytest.fixture
def attack(pool, tmp_path):
    """Run `sol` (faulty on i7) in the pool; check i1 still scores and the next evaluation is clean."""

    def run(sol: str, **kw) -> dict[str, dict]:
        res = results_of(pool.run(make_job(tmp_path, sol, **kw)))
        assert res["i1"]["status"] == "ok" and res["i1"]["score"] == 1.0, res["i1"]
        nxt = results_of(pool.run(make_job(tmp_path, GOOD_SOL, instances=("i1", "i2"))))
        assert all(r["status"] == "ok" and r["score"] == 1.0 for r in nxt.values()), nxt
        for box in list(pool._idle):  # nothing of the candidate is left running in a pooled container
            procs = box.container.top(ps_args="-eo pid,uid,stat,args")["Processes"]
            assert all(p[1] == "0" for p in procs), procs
            # (a finished harness of the server's own may wait a moment to be reaped; it is root)
        return res

    return run


def test_results_match_the_process_backend(pool, tmp_path) -> None:
    sol = faulty("raise ValueError('bad seven')")
    job = make_job(tmp_path, sol, instances=("i1", "i7", "i2"))
    docker_res, process_res = results_of(pool.run(job)), results_of(ProcessSandbox().run(job))
    for i in ("i1", "i7", "i2"):
        d, p = docker_res[i], process_res[i]
        assert (d["status"], d["score"]) == (p["status"], p["score"]), (d, p)
    assert "bad seven" in docker_res["i7"]["feedback"] and "candidate/sol.py" in docker_res["i7"]["feedback"]


def test_fork_bomb(attack) -> None:
    res = attack(faulty("import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass"),
                 timeout_s=1)
    assert res["i7"]["status"] in ("timeout", "error"), res["i7"]
    assert subprocess.run(["true"]).returncode == 0


@pytest.mark.parametrize("body", ["while True:\n    pass",
                                  "import signal\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\nwhile True:\n"
                                  "    pass"], ids=["loop", "loop-ignoring-sigterm"])
def test_endless_loops_time_out(attack, body: str) -> None:
    assert attack(faulty(body), timeout_s=1)["i7"]["status"] == "timeout"


def test_ten_gigabytes(attack) -> None:
    res = attack(faulty("b = bytearray(10 * 1024 ** 3)"))
    assert res["i7"]["status"] == "memory", res["i7"]


def test_memory_across_processes_hits_the_container_limit(pool, tmp_path) -> None:
    # Each process stays under its own address-space limit; together they exceed the container's memory.
    body = """
    import os, time
    kids = []
    for _ in range(6):
        pid = os.fork()
        if pid == 0:
            b = bytearray(200 * 1024 * 1024)
            time.sleep(3)
            os._exit(0)
        kids.append(pid)
    for pid in kids:
        os.waitpid(pid, 0)
    """
    run = pool.run(make_job(tmp_path, faulty(body), timeout_s=5, memory_mb=256))
    assert run.memory_exceeded, results_of(run)
    nxt = results_of(pool.run(make_job(tmp_path, GOOD_SOL, instances=("i1",))))
    assert nxt["i1"]["status"] == "ok"


def test_a_gigabyte_on_stdout(attack) -> None:
    res = attack(faulty("import sys\nchunk = 'x' * (1 << 20)\nfor _ in range(1024):\n    sys.stdout.write(chunk)"))
    assert res["i7"]["status"] == "output_limit", res["i7"]


@pytest.mark.parametrize("where", ["cwd", "/tmp"])
def test_a_five_gigabyte_file(attack, where: str) -> None:
    # One big file hits the file-size limit; many smaller ones fill a size-capped tmpfs, never the host.
    body = f"""
    import os
    base = os.getcwd() if {where!r} == "cwd" else "/tmp"
    chunk = b"x" * (1 << 20)
    written = 0
    try:
        for n in range(5 * 1024 // 3):
            with open(os.path.join(base, f"fill{{n}}"), "wb") as fh:
                for _ in range(3):
                    fh.write(chunk)
                    written += 1
    except OSError as exc:
        return {{"stopped_at_mb": written, "error": type(exc).__name__}}
    return {{"stopped_at_mb": written}}
    """
    before = os.statvfs("/dev/shm")
    res = attack(faulty(body), evaluate=PROBE_EVALUATE, timeout_s=10, output_limit_mb=4)
    seen = probe(res["i7"])
    assert "error" in seen and seen["stopped_at_mb"] < 1024, seen
    after = os.statvfs("/dev/shm")
    assert after.f_bavail >= before.f_bavail - 1024, "the host's shared memory filled up"


def test_no_network_outside_or_to_the_host(attack) -> None:
    with socket.socket() as server:
        server.bind(("0.0.0.0", 0))
        server.listen(1)
        port = server.getsockname()[1]
        body = f"""
        import socket
        out = {{}}
        for name, addr in (("outside", ("1.1.1.1", 53)), ("docker_gateway", ("172.17.0.1", {port})),
                           ("loopback", ("127.0.0.1", {port}))):
            try:
                socket.create_connection(addr, timeout=1).close()
                out[name] = "connected"
            except OSError as exc:
                out[name] = "blocked " + type(exc).__name__
        return out
        """
        seen = probe(attack(faulty(body), evaluate=PROBE_EVALUATE, timeout_s=10)["i7"])
    assert all(v.startswith("blocked") for v in seen.values()), seen


def test_writes_outside_the_workdir_and_into_the_harness(attack) -> None:
    body = """
    import os, sys, evolver_harness
    root = os.path.dirname(os.path.dirname(sys.modules["task_evaluator"].__file__))  # the harness's folder
    out = {}
    for name, path in (("etc", "/etc/pwned"), ("usr", "/usr/lib/python3/pwned.py"),
                       ("harness", os.path.join(os.path.dirname(evolver_harness.__file__), "pwned.py")),
                       ("harness_file", os.path.join(os.path.dirname(evolver_harness.__file__), "reporting.py")),
                       ("task", os.path.join(root, "task", "evaluate.py")),
                       ("sandbox_root", os.path.join(root, "pwned")),
                       ("harness_io", os.path.join(root, "harness-io", "pwned")),
                       ("control", "/evolver/ctl/pwned")):
        try:
            with open(path, "a") as fh:
                fh.write("pwned")
            out[name] = "written"
        except OSError as exc:
            out[name] = "denied " + type(exc).__name__
    return out
    """
    seen = probe(attack(faulty(body), evaluate=PROBE_EVALUATE)["i7"])
    assert all(v.startswith("denied") for v in seen.values()), seen
    assert seen["control"] == "denied PermissionError", seen
    assert not any("FileNotFound" in v for v in seen.values()), seen  # every target exists: a real denial


def test_the_host_environment_does_not_reach_the_candidate(attack, monkeypatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-evolver-test-do-not-leak-91e2")
    body = """
    import os
    found = dict(os.environ)
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/environ", "rb") as fh:
                    found[entry] = fh.read().decode("latin-1")
            except OSError:
                pass
    return found
    """
    seen = probe(attack(faulty(body), evaluate=PROBE_EVALUATE)["i7"])
    assert "sk-evolver-test" not in json.dumps(seen)
    assert "OPENAI_API_KEY" not in seen


def test_background_process_and_zombies_do_not_outlive_the_instance(attack) -> None:
    body = """
    import os, time
    for _ in range(20):  # zombies: children that exit and are never waited for
        if os.fork() == 0:
            os._exit(0)
    if os.fork() == 0:  # a daemon meant to outlive the evaluation
        os.setsid()
        if os.fork() == 0:
            time.sleep(120)
        os._exit(0)
    time.sleep(0.2)
    """
    res = attack(faulty(body))
    assert res["i7"]["status"] == "ok"


def test_killing_the_harness_and_tampering_with_results(attack) -> None:
    body = """
    import os, signal, sys
    out = {}
    root = os.path.dirname(os.path.dirname(sys.modules["task_evaluator"].__file__))  # the harness's folder
    for name, pid in (("init", 1), ("parent", os.getppid())):
        try:
            os.kill(pid, signal.SIGKILL)
            out[name] = "killed"
        except OSError as exc:
            out[name] = "denied " + type(exc).__name__
    try:
        out["results"] = os.listdir(os.path.join(root, "harness-io"))
    except OSError as exc:
        out["results"] = "denied " + type(exc).__name__
    try:
        import socket
        socket.socket(socket.AF_UNIX).connect("/evolver/ctl/fork.sock")
        out["fork_server"] = "connected"
    except OSError as exc:
        out["fork_server"] = "denied " + type(exc).__name__
    return out
    """
    seen = probe(attack(faulty(body), evaluate=PROBE_EVALUATE, instances=("i1", "i7", "i2"))["i7"])
    assert all(str(v).startswith("denied") for v in seen.values()), seen
    assert seen["fork_server"] == "denied PermissionError" and seen["results"] == "denied PermissionError", seen


def test_kill_everything_it_can_from_inside(attack) -> None:
    # kill(-1) reaches every process the candidate may signal (not itself): the harness and server survive.
    res = attack(faulty("import os, signal\nos.kill(-1, signal.SIGKILL)"), instances=("i7", "i1"))
    assert res["i7"]["status"] == "ok", res["i7"]


def test_strict_isolation_uses_a_fresh_container(client, image, tmp_path) -> None:
    sandbox = DockerSandbox(client, image, isolation="strict", run_label="tests-strict")
    try:
        res = results_of(sandbox.run(make_job(tmp_path, faulty("while True:\n    pass"), timeout_s=1)))
        assert res["i7"]["status"] == "timeout" and res["i1"]["status"] == "ok"
        assert not ours(client, "tests-strict")  # removed after each evaluation
    finally:
        sandbox.close()


def test_host_watchdog_replaces_a_stuck_container(client, image, tmp_path) -> None:
    sandbox = DockerSandbox(client, image, run_label="tests-watchdog")
    try:
        job = make_job(tmp_path, GOOD_SOL, instances=("i1",))
        first = results_of(sandbox.run(job))
        assert first["i1"]["status"] == "ok"
        stuck = sandbox._idle[0]
        stuck.container.pause()  # the fork-server can no longer answer: only the host watchdog can help
        import evolver.sandbox.docker as docker_mod
        from evolver.sandbox.base import HARNESS_SLACK_S

        # The watchdog fires 2.5 s after the run starts (instead of the harness's slack of 30 s plus 15 s).
        slack, docker_mod.HOST_SLACK_S = docker_mod.HOST_SLACK_S, 0.5 - HARNESS_SLACK_S
        try:
            run = sandbox.run(job)
        finally:
            docker_mod.HOST_SLACK_S = slack
        assert run.timed_out and not run.ok
        deadline = time.monotonic() + 20
        while any(c.id == stuck.container.id for c in ours(client)) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any(c.id == stuck.container.id for c in ours(client)), "the stuck container was kept"
        assert results_of(sandbox.run(job))["i1"]["status"] == "ok"
    finally:
        sandbox.close()


SWEEP_VICTIM = """
import sys, time
from evolver.sandbox.docker import DockerSandbox
from evolver.sandbox.docker_host import connect
sandbox = DockerSandbox(connect(), sys.argv[1], run_label="tests-killed")
from pathlib import Path
from evolver.sandbox import SandboxJob
box = sandbox._acquire(SandboxJob(mode="python", archive=b"", task_root=Path("/"), task_files=(), instances=()))
print(box.container.id, box.mounts.work.path, flush=True)
time.sleep(600)
"""


def test_kill_9_leftovers_are_swept_by_the_next_start(client, image) -> None:
    proc = subprocess.Popen([sys.executable, "-c", SWEEP_VICTIM, image], stdout=subprocess.PIPE, text=True)
    try:
        container_id, mount = proc.stdout.readline().split()
    finally:
        proc.kill()
        proc.wait()
    assert client.containers.get(container_id)  # left behind by the kill -9
    sweep_stale(client)
    assert not [c for c in client.containers.list(all=True) if c.id == container_id]
    assert not Path(mount).exists() or not os.path.ismount(mount)


def test_close_removes_containers_and_mounts(client, image, tmp_path) -> None:
    sandbox = DockerSandbox(client, image, run_label="tests-close")
    jobs = [make_job(tmp_path, GOOD_SOL, instances=("i1",)) for _ in range(2)]
    threads = [threading.Thread(target=sandbox.run, args=(j,)) for j in jobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    sandbox.close()
    time.sleep(0.5)
    assert not ours(client, "tests-close")
    if MOUNT_BASE.exists():
        assert not [p for p in MOUNT_BASE.iterdir() if "tests-close" in p.name]


def test_auto_prefers_docker_and_check_reports_it(image) -> None:
    assert resolve_backend("auto")[0] == "docker" or os.environ.get("EVOLVER_BACKEND") == "process"
    out = subprocess.run([sys.executable, "-m", "evolver", "sandbox", "check", "--backend", "docker", "--json"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert doc["backend"] == "docker" and doc["probe"]["capabilities"] == "none"
    assert doc["probe"]["network_outside"].startswith("blocked")
    assert doc["probe"]["root_filesystem"].startswith("not writable")


def test_a_task_dockerfile_builds_offline_on_the_base(client, image, tmp_path) -> None:
    from evolver.sandbox.images import task_image

    task = tmp_path / "task-with-image"
    task.mkdir()
    (task / "Dockerfile").write_text("ARG BASE\nFROM $BASE\nCOPY extra.py /usr/lib/python3/dist-packages/extra.py\n")
    (task / "extra.py").write_text("ANSWER = 42\n")
    tag = task_image(client, task, image)
    assert tag != image and task_image(client, task, image) == tag  # tagged by content: built once
    sandbox = DockerSandbox(client, tag, run_label="tests-image")
    try:
        sol = faulty("import extra\nreturn {'answer': extra.ANSWER}")
        res = results_of(sandbox.run(make_job(tmp_path, sol, evaluate=PROBE_EVALUATE)))
        assert probe(res["i7"]) == {"answer": 42}
    finally:
        sandbox.close()


def test_pytest_mode_in_the_pool_matches_the_process_backend(pool, tmp_path) -> None:
    # Children of pytest runs are forked from the fork-server's pre-imported pytest: results must not change.
    task = tmp_path / "pytest-task"
    (task / "tests").mkdir(parents=True)
    (task / "tests" / "test_sol.py").write_text(
        "import sol\n\ndef test_good():\n    assert sol.f(1) == 2\n\ndef test_bad():\n    assert sol.f(7) == 14\n")
    base = make_job(tmp_path, faulty("return -1"))
    job = SandboxJob(mode="pytest", archive=base.archive, task_root=task,
                     task_files=(task / "tests" / "test_sol.py",),
                     instances=("test_sol.py::test_good", "test_sol.py::test_bad"), limits=base.limits)
    docker_res, process_res = results_of(pool.run(job)), results_of(ProcessSandbox().run(job))
    for i in job.instances:
        assert (docker_res[i]["status"], docker_res[i]["score"]) == (process_res[i]["status"],
                                                                     process_res[i]["score"])
    assert docker_res["test_sol.py::test_bad"]["status"] == "failed"
    assert "assert -1 == 14" in docker_res["test_sol.py::test_bad"]["feedback"]
    assert docker_res["test_sol.py::test_good"]["status"] == "ok"


def test_private_task_files_are_unreadable_to_the_candidate(pool, tmp_path) -> None:
    import dataclasses

    body = """
    import os, sys
    path = os.path.join(os.path.dirname(sys.modules["task_evaluator"].__file__), "answers.txt")
    try:
        return open(path).read()
    except OSError as exc:
        return "denied " + type(exc).__name__
    """
    job = make_job(tmp_path, faulty(body), evaluate=PROBE_EVALUATE)
    (job.task_root / "answers.txt").write_text("i7 -> 14\n")
    job = dataclasses.replace(job, task_files=(*job.task_files, job.task_root / "answers.txt"),
                              private_files=frozenset({job.task_root / "answers.txt"}))
    res = results_of(pool.run(job))
    assert probe(res["i7"]) == "denied PermissionError"
    assert res["i1"]["status"] == "ok"


def test_the_trusted_side_reads_candidate_files_as_text_on_both_backends(pool, tmp_path) -> None:
    evaluate = '''
import os
from evolver_harness import candidate_dir, report
SNAPSHOT = open(os.path.join(candidate_dir(), "sol.py")).read()  # at load time: before any candidate runs

def produce(inputs):
    return 1

def judge(instance, inputs, output, usage):
    return report(instance, 1.0, feedback=SNAPSHOT, size=len(SNAPSHOT))
'''
    job = make_job(tmp_path, GOOD_SOL, evaluate=evaluate, instances=("i1",))
    for sandbox in (pool, ProcessSandbox()):
        res = results_of(sandbox.run(job))["i1"]
        assert res["feedback"].strip() == GOOD_SOL.strip() and res["objectives"]["size"] > 0, (sandbox.name, res)


def test_what_a_candidate_leaves_in_tmp_never_reaches_the_next_one(pool, tmp_path) -> None:
    body = """
    for path in ("/tmp/memo", "/dev/shm/memo"):
        with open(path, "w") as fh:
            fh.write("answers of the last run")
    """
    assert results_of(pool.run(make_job(tmp_path, faulty(body))))["i7"]["status"] == "ok"
    look = faulty("import os\nreturn {p: os.path.exists(p) for p in ('/tmp/memo', '/dev/shm/memo')}")
    seen = probe(results_of(pool.run(make_job(tmp_path, look, evaluate=PROBE_EVALUATE)))["i7"])
    assert seen == {"/tmp/memo": False, "/dev/shm/memo": False}


FORGED_DOCUMENT = """
import json, os, sys
doc = {"ok": True, "output_json": "14",
       "profile": [{"function": "x", "ncalls": 1e999, "primitive_calls": 1, "tottime_s": 1, "cumtime_s": 1}]}
os.write(int(sys.argv[-1]), json.dumps(doc).replace("Infinity", "1e999").encode())
os._exit(0)
"""


@pytest.mark.parametrize("backend", ["docker", "process"])
def test_a_forged_child_document_with_overflowing_numbers_spoils_nothing(pool, tmp_path, backend: str) -> None:
    sandbox = pool if backend == "docker" else ProcessSandbox()
    res = results_of(sandbox.run(make_job(tmp_path, faulty(FORGED_DOCUMENT), instances=("i1", "i7", "i2"))))
    assert res["i7"]["status"] != "ok" or res["i7"]["score"] == 0.0
    assert res["i1"]["score"] == 1.0 and res["i2"]["score"] == 1.0


def test_an_engine_failure_is_this_evaluations_sandbox_error(client, tmp_path) -> None:
    sandbox = DockerSandbox(client, "evolver-sandbox:no-such-image", run_label="tests-broken")
    try:
        run = sandbox.run(make_job(tmp_path, GOOD_SOL, instances=("i1",)))
        assert not run.ok and "docker sandbox failed" in run.error, run.error
        assert not ours(client, "tests-broken")
    finally:
        sandbox.close()
