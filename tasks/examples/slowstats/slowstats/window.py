"""Sliding-window statistics."""


def moving_max(values: list[float], width: int) -> list[float]:
    """The maximum of every window of `width` consecutive values, in order (len(values) - width + 1 of them).

    >>> moving_max([1, 3, 2, 5, 4], 2)
    [3, 3, 5, 5]
    """
    if width <= 0:
        raise ValueError(f"width must be positive, got {width}")
    result = []
    for start in range(len(values) - width + 1):
        window = values[start:start + width]
        best = window[0]
        for value in window:
            if value > best:
                best = value
        result.append(best)
    return result
