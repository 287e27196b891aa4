"""Several iterations in flight: the engine's work function run in threads, and what Ctrl-C does to them."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


def run_in_threads(work: Callable[[], None], workers: int, on_interrupt: Callable[[], None], join_s: float) -> None:
    """Run `work` in `workers` threads (in this one when 1) until all return. On Ctrl-C (or any exception in the
    waiting thread) call `on_interrupt`, give the threads `join_s` seconds to see it, and re-raise: an LLM call or
    an evaluation in flight may not end soon, and the caller closes the resources under them next."""
    if workers == 1:
        work()
        return
    threads = [threading.Thread(target=work, name=f"evolver-iteration-{k}", daemon=True) for k in range(workers)]
    for t in threads:
        t.start()
    try:
        while any(t.is_alive() for t in threads):
            for t in threads:
                t.join(0.2)
    except BaseException:
        on_interrupt()
        deadline = time.monotonic() + join_s
        for t in threads:
            t.join(max(0.0, deadline - time.monotonic()))
        raise
