"""Thread priority: verify threads that check backlog yield the cores to the GIL's holders.

A verify thread spends ~90% of its time in libsodium with the GIL released,
so two of them keep both cores of a small machine busy. The event loop and
the writer need the GIL for their Python, and when the kernel preempts one of
them to run a verify thread, every other Python thread waits for the GIL it
holds: at full load the GIL was held ~80% of the time, a third of it by the
event loop, whose CPU was ~11% of a core (benchmarks/README.md, session 11).
At nice 19 a verify thread has 1/68 of a nice-0 thread's weight, so the loop
and the writer run whenever they are ready and verification takes every
cycle they leave. Nothing starves: at nice 19 a thread still gets its share
of a core that other processes keep busy. The gain measured so far is small
(0-12% of throughput at the median, by set) on a very noisy machine.

Linux sets a niceness per thread (``setpriority`` with a thread id); elsewhere
the same call would change the whole process, so it is left alone there.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from typing import Final

#: The niceness the node gives its verify threads by default (the weakest).
VERIFY_NICE: Final = 19
#: What ``os.setpriority`` accepts (-20 is the strongest).
NICE_RANGE: Final = range(-20, 20)
#: What the node accepts for its verify threads: 0 (the node's own) to the weakest.
VERIFY_NICE_RANGE: Final = range(0, 20)

_log = logging.getLogger("chainmail.priority")


def supported() -> bool:
    """Whether a single thread's niceness can be set here (Linux only)."""
    return sys.platform.startswith("linux")


def lower_this_thread(nice: int) -> bool:
    """Give the calling thread ``nice`` (at least its current one); True when it took effect.

    Never raises for the platform or for permission: a thread that keeps its
    priority is slower to yield, not wrong. Raises ``ValueError`` for a
    ``nice`` outside -20..19.
    """
    if nice not in NICE_RANGE:
        raise ValueError(f"nice: expected -20 to 19, got {nice}")
    if not supported():
        return False
    tid = threading.get_native_id()
    try:
        current = os.getpriority(os.PRIO_PROCESS, tid)
        if nice <= current:
            return nice == current
        os.setpriority(os.PRIO_PROCESS, tid, nice)
    except OSError as exc:
        _log.warning("thread %d keeps its priority: %s", tid, exc)
        return False
    return True


def this_thread() -> int | None:
    """The calling thread's niceness, or None where threads have none of their own."""
    if not supported():
        return None
    return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
