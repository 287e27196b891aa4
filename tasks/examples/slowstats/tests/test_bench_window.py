"""Benchmark-style test: a large input, checked, so that its duration is the runtime worth improving."""

import random

from slowstats.window import moving_max


def test_bench_moving_max_large():
    rng = random.Random(0)
    values = [rng.random() for _ in range(20_000)]
    width = 400
    result = moving_max(values, width)
    assert len(result) == len(values) - width + 1
    assert result[0] == max(values[:width]) and result[-1] == max(values[-width:])
