"""Write data/traces.json: synthetic spot-availability traces, the scenarios built on them, and each scenario's
offline optimum and baseline costs. Deterministic: the same file every run (`--check` verifies that).

    python tasks/spot/generate_traces.py            # regenerate (a few minutes: the optimum of 126 scenarios)
    python tasks/spot/generate_traces.py --check    # regenerate in memory and compare with the shipped file
    python tasks/spot/generate_traces.py --stats    # measured statistics of each zone on a long trace

Why synthetic: the public traces of the reference work carry no licence. Each zone alternates available and
unavailable stretches whose lengths are lognormal (heavy-tailed, as measured on the public traces: medians
0.2-0.8 h, means 0.5-12 h) and rounded to whole 10-minute ticks (at least one). The available stretches have
the zone's median and mean; the unavailable ones a lighter tail (sigma at most 1), scaled so that the long-run
available fraction is the zone's availability (10-90% across zones, as published). Each zone gives one 92-hour trace;
each trace gives 9 scenarios (deadline 52/70/92 h x restart overhead 0.02/0.2/0.4 h). The splits use
disjoint zones, each spanning low to high availability.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import statistics
import sys
from pathlib import Path
from types import ModuleType

TASK_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(TASK_DIR))

from spot_api import run_policy  # noqa: E402
from spot_optimum import offline_optimum  # noqa: E402
from spot_server import SpotServer  # noqa: E402
from spot_sim import (  # noqa: E402
    DEADLINES_H,
    MAX_TICKS,
    OVERHEADS_H,
    PRICE_OD,
    PRICE_SPOT,
    TICK_S,
    UNITS_PER_DOLLAR,
    WORK_S,
    Scenario,
    replay,
    scenario,
)

DATA_FILE = TASK_DIR / "data" / "traces.json"
INSTANCES_FILE = TASK_DIR / "instances.toml"
TICKS_PER_HOUR = 3600 // TICK_S

# zone: (split, availability, median of available stretches in h, mean of available stretches in h)
ZONES: dict[str, tuple[str, float, float, float]] = {
    "z01": ("train", 0.12, 0.2, 0.5),
    "z02": ("train", 0.30, 0.4, 2.0),
    "z03": ("train", 0.40, 0.3, 1.0),
    "z04": ("train", 0.50, 0.6, 6.0),
    "z05": ("train", 0.70, 0.8, 12.0),
    "z06": ("train", 0.85, 0.5, 8.0),
    "z07": ("val", 0.20, 0.3, 1.0),
    "z08": ("val", 0.45, 0.5, 4.0),
    "z09": ("val", 0.65, 0.7, 9.0),
    "z10": ("val", 0.88, 0.8, 12.0),
    "z11": ("test", 0.11, 0.2, 0.6),
    "z12": ("test", 0.35, 0.4, 3.0),
    "z13": ("test", 0.55, 0.6, 7.0),
    "z14": ("test", 0.80, 0.5, 10.0),
}
SEED_PREFIX = "evolver-spot-v1"


# Unavailable stretches are less heavy-tailed than available ones (only the latter are published): with the
# same sigma (up to 2.3) a 92-hour window's availability would hardly depend on the zone's.
SIGMA_UNAVAILABLE_MAX = 1.0


def stretch_params(availability: float, median_h: float, mean_h: float) -> tuple[float, float, float, float]:
    """(sigma and median of available stretches, sigma and median of unavailable ones) of the lognormals, in
    hours: the available ones have the zone's median and mean, the unavailable ones the mean that makes the
    long-run available fraction the zone's availability."""
    sigma_up = math.sqrt(2 * math.log(mean_h / median_h))
    sigma_down = min(sigma_up, SIGMA_UNAVAILABLE_MAX)
    mean_unavailable = mean_h * (1 - availability) / availability
    return sigma_up, median_h, sigma_down, mean_unavailable / math.exp(sigma_down * sigma_down / 2)


def generate(zone: str, ticks: int, salt: str = "") -> str:
    """An availability string of `ticks` characters ('1' = spot available in that tick)."""
    _, availability, median_h, mean_h = ZONES[zone]
    sigma_up, median_up, sigma_down, median_down = stretch_params(availability, median_h, mean_h)
    rng = random.Random(f"{SEED_PREFIX}/{zone}/{salt}")
    up = rng.random() < availability  # start in the long-run proportion of each state
    bits: list[str] = []
    while len(bits) < ticks:
        median, sigma = (median_up, sigma_up) if up else (median_down, sigma_down)
        hours = rng.lognormvariate(math.log(median), sigma)
        bits.extend(("1" if up else "0") * max(1, round(hours * TICKS_PER_HOUR)))
        up = not up
    return "".join(bits[:ticks])


def stretch_stats(bits: str) -> dict[str, float]:
    runs: dict[str, list[int]] = {"0": [], "1": []}
    start = 0
    for i in range(1, len(bits) + 1):
        if i == len(bits) or bits[i] != bits[start]:
            runs[bits[start]].append(i - start)
            start = i
    up = [r / TICKS_PER_HOUR for r in runs["1"]] or [0.0]
    return {"availability": bits.count("1") / len(bits), "up_median_h": statistics.median(up),
            "up_mean_h": statistics.fmean(up), "up_stretches": len(runs["1"])}


def instance_id(zone: str, deadline_h: int, overhead_h: float) -> str:
    return f"{zone}-d{deadline_h}-o{overhead_h:.2f}"


def _load_policy(name: str) -> ModuleType:
    path = TASK_DIR / "baselines" / f"{name}.py"
    module = ModuleType(f"spot_baseline_{name}")
    exec(compile(path.read_text(encoding="utf-8"), str(path), "exec"), module.__dict__)
    return module


def policy_cost(sc: Scenario, policy: ModuleType, params: dict) -> float:
    """A baseline's cost, through the same server and observation code as an evaluation."""
    server = SpotServer(sc)
    run_policy(policy.decide, params, server.handle)
    return replay(sc, server.decisions).cost


def params_of(deadline_h: float, overhead_h: float) -> dict[str, float]:
    """What prepare hands the policy: the scenario's parameters, never its trace."""
    return {"deadline_h": deadline_h, "restart_overhead_h": overhead_h, "work_h": WORK_S / 3600,
            "tick_h": TICK_S / 3600, "price_spot": PRICE_SPOT, "price_on_demand": PRICE_OD}


def build(log=print) -> dict:
    baselines = {name: _load_policy(name) for name in ("greedy", "uniform_progress")}
    traces, scenarios, splits = {}, {}, {"train": [], "val": [], "test": []}
    for zone, (split, availability, median_h, mean_h) in ZONES.items():
        bits = generate(zone, MAX_TICKS)
        traces[zone] = {"availability": availability, "up_median_h": median_h, "up_mean_h": mean_h,
                        "measured": {k: round(v, 4) for k, v in stretch_stats(bits).items()}, "avail": bits}
        for deadline_h in DEADLINES_H:
            for overhead_h in OVERHEADS_H:
                name = instance_id(zone, deadline_h, overhead_h)
                sc = scenario(bits, deadline_h, overhead_h)
                params = params_of(deadline_h, overhead_h)
                costs = {b: policy_cost(sc, m, params) for b, m in baselines.items()}
                bound = math.ceil(min(costs.values()) * UNITS_PER_DOLLAR) + 1
                optimum = offline_optimum(sc, bound) / UNITS_PER_DOLLAR
                scenarios[name] = {"trace": zone, "deadline_h": deadline_h, "overhead_h": overhead_h,
                                   "optimum": round(optimum, 6), **{b: round(c, 6) for b, c in costs.items()}}
                splits[split].append(name)
                log(f"{name}: optimum {optimum:.3f}, greedy {costs['greedy']:.3f}, "
                    f"uniform progress {costs['uniform_progress']:.3f}")
    return {"about": "generated by generate_traces.py; do not edit by hand", "seed_prefix": SEED_PREFIX,
            "zones": {z: list(v) for z, v in ZONES.items()}, "traces": traces, "scenarios": scenarios,
            "splits": splits}


def render(doc: dict) -> str:
    return json.dumps(doc, indent=1, sort_keys=True) + "\n"


def render_instances(doc: dict) -> str:
    lines = ["# Written by generate_traces.py with data/traces.json: one instance per (zone, deadline, overhead)."]
    for split in ("train", "val", "test"):
        names = doc["splits"][split]
        lines.append(f"{split} = [")
        lines.extend(f'    "{n}",' for n in names)
        lines.append("]")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="compare with the shipped file, write nothing")
    parser.add_argument("--stats", action="store_true", help="each zone's statistics on a 5,000-hour trace")
    args = parser.parse_args()
    if args.stats:
        print("zone  split  target avail / median / mean  ->  measured (5,000 h)")
        for zone, (split, availability, median_h, mean_h) in ZONES.items():
            s = stretch_stats(generate(zone, 5000 * TICKS_PER_HOUR, salt="stats"))
            print(f"{zone}  {split:5}  {availability:.2f} / {median_h:.1f} h / {mean_h:4.1f} h  ->  "
                  f"{s['availability']:.2f} / {s['up_median_h']:.2f} h / {s['up_mean_h']:5.2f} h")
        return 0
    doc = build(log=(lambda *_: None) if args.check else print)
    outputs = {DATA_FILE: render(doc), INSTANCES_FILE: render_instances(doc)}
    if args.check:
        stale = [p.name for p, text in outputs.items() if not p.is_file() or p.read_text(encoding="utf-8") != text]
        print(f"differs from what the generator makes: {', '.join(stale)}" if stale else "up to date")
        return 1 if stale else 0
    DATA_FILE.parent.mkdir(parents=True, exist_ok=True)
    for path, text in outputs.items():
        path.write_text(text, encoding="utf-8")
        print(f"wrote {path.relative_to(TASK_DIR)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
