"""Condensed side information: failures first, identical failures folded, budgets kept."""

from __future__ import annotations

from dataclasses import replace

from evolver.evaluation import InstanceResult
from evolver.evidence import clip, condense, group_failures, sanitize


def _r(instance: str, status: str, score: float, feedback: str, profile=()) -> InstanceResult:
    return InstanceResult(instance=instance, split="train", status=status, score=score, objectives={},
                          feedback=feedback, profile=tuple(profile))


def test_failures_first_folded_with_count() -> None:
    tb = "Traceback:\n  File \"candidate/x.py\", line 3, in f\nKeyError: 'k' at 0xdeadbeef12 for {inst}"
    results = [
        _r("a", "ok", 0.9, "fine"),
        _r("b", "error", 0.0, tb.format(inst="b").replace("0xdeadbeef12", "0x7f00aa11bb")),
        _r("c", "error", 0.0, tb.format(inst="c")),
        _r("d", "timeout", 0.0, "Timed out after 2 s"),
    ]
    groups = group_failures(results)
    assert [g.status for g in groups] == ["timeout", "error"]
    assert groups[1].instances == ("b", "c")
    text = condense(results)
    assert text.index("[timeout]") < text.index("[error x2] b, c") < text.index("[ok] a")


def test_budget_clip_and_profile_kept() -> None:
    long = "line\n" * 5000
    results = [_r(f"i{k}", "failed", 0.0, f"unique failure {k}\n{long}") for k in range(30)]
    results[0] = _r("i0", "failed", 0.0, "x", profile=[{"function": "sol.py:1(f)", "ncalls": 3,
                                                        "tottime_s": 0.5, "cumtime_s": 1.0}])
    text = condense(results, budget=3000)
    assert len(text) < 3600
    assert "more entries cut" in text and "sol.py:1(f)" in text
    assert "characters cut" in clip(long, 200) and len(clip(long, 200)) < 260


def test_sanitize_makes_escapes_visible() -> None:
    assert sanitize("ok\x1b[31mred\x00\n") == "ok\\x1b[31mred\\x00\n"


def test_hot_spots_are_only_the_functions_that_take_real_time() -> None:
    from evolver.evidence import hot_spots

    profile = ({"function": "sol.py:3(slow)", "ncalls": 1, "tottime_s": 0.3, "cumtime_s": 0.4},
               {"function": "sol.py:9(tiny)", "ncalls": 1, "tottime_s": 0.0004, "cumtime_s": 0.0004},
               {"function": "sol.py:12(minor)", "ncalls": 1, "tottime_s": 0.01, "cumtime_s": 0.01})
    r = InstanceResult(instance="a", split="train", status="ok", score=1.0, objectives={}, feedback="",
                       profile=profile, usage={"cpu_s": 0.5})
    assert [h.function for h in hot_spots([r])] == ["sol.py:3(slow)"]  # 0.01 s is 2% of 0.5 s: no lead
    assert [h.function for h in hot_spots([replace(r, usage=None)])] == ["sol.py:3(slow)", "sol.py:12(minor)"]
