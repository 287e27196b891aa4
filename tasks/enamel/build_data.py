"""Build this task's data, seed and splits from the ENAMEL and HumanEval+ releases (reproducible).

    python tasks/enamel/build_data.py DATA_DIR

DATA_DIR holds `enamel.csv` (ENAMEL, Apache-2.0) and `HumanEvalPlus.jsonl.gz` (HumanEval+ v0.1.10, Apache-2.0)
with their licence files `enamel_LICENSE.txt` and `humanevalplus_LICENSE.txt`. Writes, next to this script:

* `data/problems.json.gz`: per problem the prompt, ENAMEL's expert reference solution, input generator, level
  sizes and checker, and the HumanEval+ correctness inputs (base + plus);
* `data/LICENSE-ENAMEL.txt`, `data/LICENSE-HumanEvalPlus.txt`, `data/ATTRIBUTION.md`;
* `seed/heNNN_<entry point>.py`: the HumanEval+ canonical solution of each problem (prompt + solution);
* `instances.toml`: a seeded train / val / test split of the problems.

The judge takes every expected output from ENAMEL's reference; HumanEval+ inputs on which that reference and
the HumanEval+ canonical solution disagree (edge cases outside ENAMEL's input domain), or whose expected output
is over a megabyte as text, are dropped and counted.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import io
import json
import random
import shutil
import signal
import sys
from pathlib import Path
from typing import Any

TASK_DIR = Path(__file__).resolve().parent
# ENAMEL's problem set: HumanEval minus the 22 problems its authors left out (trivial or ill-posed for timing).
ENAMEL_EXCLUDED = {2, 23, 41, 45, 53, 60, 71, 92, 97, 99, 102, 123, 124, 135, 137, 138, 144, 148, 156, 157, 159, 160}
SPLIT_SEED = 20240610  # the ENAMEL paper's arXiv date; any fixed value works
SPLIT_SIZES = {"train": 40, "val": 30}  # the rest is test
SOURCE_NOTE = {
    "enamel": "ENAMEL (Qiu et al., ICLR 2025), dataset/enamel.csv, Apache-2.0",
    "humanevalplus": "HumanEval+ v0.1.10 (EvalPlus, Liu et al., NeurIPS 2023), Apache-2.0",
}


def module_name(number: int, entry_point: str) -> str:
    """Seed file stem: the entry point alone is not unique (two problems define correct_bracketing)."""
    return f"he{number:03d}_{entry_point}"


def read_sources(data_dir: Path) -> tuple[dict[str, dict[str, str]], dict[str, dict[str, Any]]]:
    csv.field_size_limit(1 << 30)
    with (data_dir / "enamel.csv").open(encoding="utf-8", newline="") as f:
        enamel = {row["task_id"]: row for row in csv.DictReader(f)}
    with gzip.open(data_dir / "HumanEvalPlus.jsonl.gz", "rt", encoding="utf-8") as f:
        plus = {row["task_id"]: row for row in map(json.loads, f)}
    if len(enamel) != 164 or set(enamel) != set(plus):
        sys.exit(f"expected the 164 HumanEval problems in both files, found {len(enamel)} and {len(plus)}")
    return enamel, plus


def problem_record(number: int, row: dict[str, str], plus: dict[str, Any]) -> dict[str, Any]:
    if row["entry_point"] != plus["entry_point"]:
        sys.exit(f"{row['task_id']}: entry points differ ({row['entry_point']} vs {plus['entry_point']})")
    return {
        "task_id": row["task_id"],
        "module": module_name(number, row["entry_point"]),
        "entry_point": row["entry_point"],
        "prompt": row["prompt"],
        "reference": row["reference_solution"],
        "generator": row["input_generator"],
        "levels": [int(x) for x in row["input_levels"].split()],
        "checker": row["checker"],
        "inputs": plus["base_input"] + plus["plus_input"],
    }


class _Slow(Exception):
    pass


def _alarm(signum: int, frame: Any) -> None:
    raise _Slow


MAX_OUTPUT_CHARS = 1 << 20  # HumanEval+ inputs with larger expected outputs (e.g. tri(10**6)) are left out:
# each would cost seconds per evaluation, on both sides, and says nothing the smaller ones do not


def check_agreement(record: dict[str, Any], canonical: str) -> tuple[list[int], list[int]]:
    """Indices of HumanEval+ inputs on which the reference and the canonical solution disagree (by the checker),
    and of those whose expected output is over MAX_OUTPUT_CHARS as text."""
    import copy

    def load(body: str) -> dict[str, Any]:
        scope: dict[str, Any] = {"__name__": "enamel_check"}
        exec(compile(record["prompt"] + "\n" + body + "\n" + record["checker"], record["task_id"], "exec"), scope)
        return scope

    ref, can = load(record["reference"]), load(canonical)
    bad, huge = [], []
    signal.signal(signal.SIGALRM, _alarm)
    for k, args in enumerate(record["inputs"]):
        signal.alarm(10)
        try:
            answer = ref[record["entry_point"]](*copy.deepcopy(args))
            output = can[record["entry_point"]](*copy.deepcopy(args))
            if not ref["__check"](tuple(args), answer, output):
                bad.append(k)
            elif len(repr(answer)) > MAX_OUTPUT_CHARS:
                huge.append(k)
        except Exception:  # noqa: BLE001 - any failure is a disagreement to report
            bad.append(k)
        finally:
            signal.alarm(0)
    return bad, huge


def write_gzip_json(path: Path, doc: Any) -> None:
    raw = json.dumps(doc, separators=(",", ":"), sort_keys=True).encode()
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", mtime=0, compresslevel=9) as gz:  # mtime=0: same bytes every build
        gz.write(raw)
    path.write_bytes(buf.getvalue())


ATTRIBUTION = """# Attribution

`problems.json.gz` is derived from two datasets, both under the Apache License 2.0:

* **ENAMEL** (Ruizhong Qiu, Weiliang Will Zeng, Hanghang Tong, James Ezick, Christopher Lott: "How efficient is
  LLM-generated code? A rigorous & high-standard benchmark", ICLR 2025), file `dataset/enamel.csv`: the prompts,
  the expert reference solutions, the input generators with their level sizes, and the checkers.
  Licence: `LICENSE-ENAMEL.txt`.
* **HumanEval+** v0.1.10 (Jiawei Liu, Chunqiu Steven Xia, Yuyao Wang, Lingming Zhang: "Is your code generated by
  ChatGPT really correct?", NeurIPS 2023), based on OpenAI's HumanEval: the base and plus correctness inputs,
  and the canonical solutions that form `../seed/`. Licence: `LICENSE-HumanEvalPlus.txt`.

Changes: only the 142 problems of ENAMEL's problem set are kept; the fields are reorganised into one JSON
document by `../build_data.py`; HumanEval+ inputs on which ENAMEL's reference and the HumanEval+ canonical
solution disagree, or whose expected output is over a megabyte as text, are left out (`dropped_inputs` counts
them); nothing in the solutions, generators, checkers
or the remaining inputs was edited.
"""


def write_splits(records: list[dict[str, Any]]) -> dict[str, list[str]]:
    ids = [r["task_id"] for r in records]
    rng = random.Random(SPLIT_SEED)
    shuffled = rng.sample(ids, len(ids))
    n_train, n_val = SPLIT_SIZES["train"], SPLIT_SIZES["val"]
    order = {task_id: i for i, task_id in enumerate(ids)}
    splits = {"train": shuffled[:n_train], "val": shuffled[n_train:n_train + n_val],
              "test": shuffled[n_train + n_val:]}
    lines = [f"# ENAMEL problems (HumanEval numbering), a seeded split (build_data.py, seed {SPLIT_SEED}) of the "
             f"{len(ids)} problems of ENAMEL's set."]
    for name, members in splits.items():
        members.sort(key=order.__getitem__)
        lines.append(f"{name} = [")
        lines += [f'    "{m}",' for m in members]
        lines.append("]")
    (TASK_DIR / "instances.toml").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return splits


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data_dir", type=Path, help="folder with enamel.csv, HumanEvalPlus.jsonl.gz and licences")
    parser.add_argument("--no-check", action="store_true", help="skip the reference/canonical agreement check")
    args = parser.parse_args(argv)
    enamel, plus = read_sources(args.data_dir)

    records = []
    seed_dir = TASK_DIR / "seed"
    if seed_dir.exists():
        shutil.rmtree(seed_dir)
    seed_dir.mkdir()
    for number in range(164):
        if number in ENAMEL_EXCLUDED:
            continue
        task_id = f"HumanEval/{number}"
        record = problem_record(number, enamel[task_id], plus[task_id])
        canonical = plus[task_id]["canonical_solution"]
        (seed_dir / f"{record['module']}.py").write_text(
            (plus[task_id]["prompt"] + canonical).rstrip() + "\n", encoding="utf-8")
        if not args.no_check:
            # The judge's expected outputs come from ENAMEL's reference: inputs where it and HumanEval+'s
            # ground truth (the canonical solution) disagree are edge cases outside ENAMEL's input domain
            # (empty strings, bools as ints, rounding ties); they are dropped rather than made contradictory.
            disagree, huge = check_agreement(record, canonical)
            if disagree or huge:
                print(f"{task_id}: dropped {len(disagree)} of {len(record['inputs'])} HumanEval+ inputs on which "
                      f"ENAMEL's reference and the canonical solution disagree, {len(huge)} with huge outputs")
                drop = set(disagree) | set(huge)
                record["inputs"] = [a for k, a in enumerate(record["inputs"]) if k not in drop]
                record["dropped_inputs"] = len(drop)
        records.append(record)

    out = TASK_DIR / "data"
    out.mkdir(exist_ok=True)
    write_gzip_json(out / "problems.json.gz", {"sources": SOURCE_NOTE, "problems": records})
    shutil.copyfile(args.data_dir / "enamel_LICENSE.txt", out / "LICENSE-ENAMEL.txt")
    shutil.copyfile(args.data_dir / "humanevalplus_LICENSE.txt", out / "LICENSE-HumanEvalPlus.txt")
    (out / "ATTRIBUTION.md").write_text(ATTRIBUTION, encoding="utf-8")
    splits = write_splits(records)
    size = (out / "problems.json.gz").stat().st_size
    print(f"{len(records)} problems ({', '.join(f'{k} {len(v)}' for k, v in splits.items())}); "
          f"problems.json.gz {size / 1e6:.2f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
