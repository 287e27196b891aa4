"""Efficiency inputs of the ENAMEL problems: ENAMEL's own generator code (`generate_input(size, lid, cid)`, from
the dataset) run with a fixed seed, plus the helpers those generators call.

Trusted dataset code: only the harness's trusted process runs it (in `serve` and `prepare`); the untrusted child
receives the generated values. The helpers below are written for this task from the helpers' documented
behaviour (random balanced parentheses, probable primes, primality-test inputs); the exact random values differ
from ENAMEL's own run, which is why seeds are fixed here and reference times are measured on these inputs.
"""

from __future__ import annotations

import random
import string
from collections.abc import Callable
from typing import Any


def rand_parens(size: int, valid: bool = True, par: str = "()", sep: str | None = "") -> Any:
    """A random balanced string of `size` (rounded up to even) brackets `par`, as top-level groups joined by
    `sep` (a list of the groups when sep is None); valid=False gives an unbalanced one of about `size`."""
    if not valid:
        half = max(0, (size + 1) // 2 - 1)
        return rand_parens(half, True, par) + par[1] + par[0] + rand_parens(half, True, par)
    size += size % 2
    groups: list[list[str]] = []
    depth = 0
    for i in range(size):
        left = size - i  # brackets still to place; an open one must leave room to close every open one
        if depth == 0 or (depth < left - 1 and random.randint(0, 1)):
            if depth == 0:
                groups.append([])
            groups[-1].append(par[0])
            depth += 1
        else:
            groups[-1].append(par[1])
            depth -= 1
    texts = ["".join(g) for g in groups]
    return texts if sep is None else sep.join(texts)


def is_probable_prime(n: int, rounds: int = 5) -> bool:
    """Miller-Rabin with random bases (the generators only need probable primes)."""
    if n in (2, 3):
        return True
    if n < 2 or n % 2 == 0:
        return False
    d, r = n - 1, 0
    while d % 2 == 0:
        d //= 2
        r += 1
    for _ in range(rounds):
        x = pow(random.randint(2, n - 2), d, n)
        if x in (1, n - 1):
            continue
        for _ in range(r - 1):
            x = x * x % n
            if x == n - 1:
                break
        else:
            return False
    return True


def rand_probably_prime(lb: int, ub: int | None = None) -> int:
    """A random probable prime in [lb // 2, lb] (one exists by Bertrand's postulate), or in [lb, ub]."""
    if ub is None:
        lb = max(lb, 3)
        lb, ub = lb // 2, lb
    else:
        lb = max(lb, 0)
        ub = max(lb * 2, ub, 3)
    while True:
        p = random.randint(lb, ub)
        if is_probable_prime(p):
            return p


def rand_primality(size: int, lid: int, cid: int) -> int:
    """An input for a primality-style problem: tricky small cases on level 0, else (by cid) a prime near
    `size`, the square of a prime near sqrt(size), or a product of two such primes."""
    size = max(size, 4)
    if lid == 0 and cid < 4:
        return (30031, 561, 2, 125)[cid]  # 2*3*5*7*11*13+1 = 59*509, a Carmichael number, the even prime, a cube
    root = int(size**0.5 + 1)
    if cid % 3 == 0:
        return rand_probably_prime(size)
    if cid % 3 == 1:
        return rand_probably_prime(root) ** 2
    return rand_probably_prime(root) * rand_probably_prime(root)


HELPERS: dict[str, Callable[..., Any]] = {
    "rand_parens": rand_parens, "miller_rabin": is_probable_prime, "rand_probably_prime": rand_probably_prime,
    "rand_primality": rand_primality,
}


def generator_namespace(prompt: str, generator_source: str) -> dict[str, Any]:
    """The problem's prompt (its imports and helper functions) and generator, with the helpers in scope."""
    scope: dict[str, Any] = {"__name__": "enamel_generator", "random": random, "string": string, **HELPERS}
    exec(compile(prompt, "<prompt>", "exec"), scope)  # its last def has only a docstring: valid on its own
    exec(compile(generator_source, "<generate_input>", "exec"), scope)
    return scope


def generate(scope: dict[str, Any], size: int, lid: int, cid: int, seed: int) -> tuple[Any, ...]:
    """One input (a tuple of arguments), reproducible from the seed; the global random state is restored, so
    generating never disturbs anything else in the process."""
    state = random.getstate()
    try:
        random.seed(seed)
        args = scope["generate_input"](size=size, lid=lid, cid=cid)
    finally:
        random.setstate(state)
    return tuple(args)
