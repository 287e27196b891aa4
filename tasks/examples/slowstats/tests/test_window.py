import random

import pytest
from slowstats.window import moving_max


def test_example():
    assert moving_max([1, 3, 2, 5, 4], 2) == [3, 3, 5, 5]


def test_width_one_is_identity():
    assert moving_max([4.0, -1.5, 2.0], 1) == [4.0, -1.5, 2.0]


def test_whole_list():
    assert moving_max([2, 9, 1], 3) == [9]


def test_window_longer_than_list():
    assert moving_max([1, 2], 3) == []


def test_bad_width():
    with pytest.raises(ValueError):
        moving_max([1, 2, 3], 0)


@pytest.mark.parametrize("seed", range(5))
def test_random_against_brute_force(seed):
    rng = random.Random(seed)
    values = [rng.randint(-50, 50) for _ in range(rng.randint(0, 60))]
    width = rng.randint(1, 8)
    expected = [max(values[i:i + width]) for i in range(len(values) - width + 1)]
    assert moving_max(values, width) == expected
