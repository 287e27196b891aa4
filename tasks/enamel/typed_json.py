"""Python values <-> plain JSON, keeping what JSON would lose: tuples, sets, non-string dict keys, non-finite
floats and integers too long for a decimal string (Python refuses to parse those past 4,300 digits).

Used on both sides of the task: the trusted side encodes inputs and decodes the candidate's outputs before
the checker compares them with the reference's (ENAMEL's checkers compare types, e.g. tuple vs list).
Decoding untrusted documents is safe: only these tags are understood, nothing is executed, and the depth
is bounded.
"""

from __future__ import annotations

import math
from typing import Any

MAX_DEPTH = 60
_BIG = 10**600  # beyond this an int travels as hex (hex conversion has no digit limit)
_DECODED_AS_IS = frozenset({str, bool, type(None), int, float})


def _plain_list(items: list[Any]) -> bool:
    """Whether a list holds only scalars that JSON keeps as they are (the common case, checked in C loops:
    inputs of thousands of items are encoded and decoded while the clock runs)."""
    kinds = set(map(type, items))
    if not kinds <= {str, bool, type(None), int, float}:
        return False
    if int in kinds and not all(-_BIG <= v <= _BIG for v in items if type(v) is int):
        return False
    return float not in kinds or all(map(math.isfinite, (v for v in items if type(v) is float)))


def encode(value: Any, depth: int = 0) -> Any:
    if depth > MAX_DEPTH:
        raise ValueError(f"value nested deeper than {MAX_DEPTH} levels")
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        return {"int": hex(value)} if abs(value) > _BIG else value
    if isinstance(value, float):
        return value if math.isfinite(value) else {"float": repr(value)}
    if isinstance(value, list):
        return list(value) if _plain_list(value) else [encode(v, depth + 1) for v in value]
    if isinstance(value, tuple):
        return {"tuple": [encode(v, depth + 1) for v in value]}
    if isinstance(value, (set, frozenset)):
        return {"set": [encode(v, depth + 1) for v in value]}
    if isinstance(value, dict):
        if all(isinstance(k, str) for k in value):
            return {"dict": {k: encode(v, depth + 1) for k, v in value.items()}}
        return {"pairs": [[encode(k, depth + 1), encode(v, depth + 1)] for k, v in value.items()]}
    raise TypeError(f"cannot send a {type(value).__name__} ({str(value)[:60]!r}); expected plain data")


def decode(doc: Any, depth: int = 0) -> Any:
    if depth > MAX_DEPTH:
        raise ValueError(f"value nested deeper than {MAX_DEPTH} levels")
    if doc is None or isinstance(doc, (bool, int, float, str)):
        return doc
    if isinstance(doc, list):
        if set(map(type, doc)) <= _DECODED_AS_IS:
            return list(doc)  # a fresh list: the caller may mutate it
        return [decode(v, depth + 1) for v in doc]
    if isinstance(doc, dict) and len(doc) == 1:
        (tag, body), = doc.items()
        if tag == "int" and isinstance(body, str):
            return int(body, 16)
        if tag == "float" and body in ("inf", "-inf", "nan"):
            return float(body)
        if tag == "tuple" and isinstance(body, list):
            return tuple(decode(v, depth + 1) for v in body)
        if tag == "set" and isinstance(body, list):
            return {decode(v, depth + 1) for v in body}
        if tag == "dict" and isinstance(body, dict):
            return {k: decode(v, depth + 1) for k, v in body.items()}
        if tag == "pairs" and isinstance(body, list) and all(isinstance(p, list) and len(p) == 2 for p in body):
            return {decode(k, depth + 1): decode(v, depth + 1) for k, v in body}
    raise ValueError(f"not a value of this task's encoding: {str(doc)[:80]}")
