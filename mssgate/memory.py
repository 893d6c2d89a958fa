"""The process's memory, set for a long-running gateway: the allocator, the garbage collector.

``mssgate serve`` calls :func:`settle_memory` once started. Afterwards the garbage
collector's young collections are made by :func:`collect_if_due` at moments when the gateway
waits anyway (a message has just been written upstream and its reply is some way off), not
whenever an allocation in the middle of a message happens to cross the threshold: a young
collection costs about 0.1 ms, an older one a millisecond or more, and a message that met one
made the latency's tail. The automatic collection stays, at a higher threshold, for a
gateway that never waits on an upstream (every message refused, or dropped in an outbox).
"""

from __future__ import annotations

import ctypes
import gc

GC_YOUNG = 20_000
"""Allocations (net of those freed) after which a young collection is due; the default, 700,
would run one every few messages."""
GC_AUTOMATIC = 4 * GC_YOUNG
"""The automatic collection's threshold, once :func:`settle_memory` ran: reached only when
:func:`collect_if_due` had no chance to run."""
GC_OLDER = (20, 20)
"""Young collections between collections of the middle generation, and middle-generation
collections between full ones (CPython's rule, with its defaults raised)."""

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
"""glibc's ``mallopt`` parameters (malloc.h)."""
_MMAP_THRESHOLD = 32 * 1024 * 1024
"""Blocks below this come from the heap, not from a mapping of their own (glibc's maximum)."""
_TRIM_THRESHOLD = 64 * 1024 * 1024
"""Free memory kept at the top of the heap before any is given back to the system."""


def tune_allocator() -> bool:
    """glibc's malloc, told to keep message-sized blocks in memory it already has.

    A big message is held three times (the chunks read, the message joined, the signed copy)
    and let go a few milliseconds later. By default glibc maps each block of a few MB on its
    own, or gives the freed top of the heap back to the system, and the next message touches
    fresh pages again: some 3,700 page faults for a 5 MB message, a third of its processor
    time. Past the thresholds above, memory goes back to the system as before. True when the
    C library took both settings (elsewhere than glibc its defaults stay)."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    mapped = mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD)
    trimmed = mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD)
    return bool(mapped and trimmed)


def settle_memory() -> None:
    """Once started: the objects that live as long as the process (modules, the policy, the
    national list) leave the garbage collector's view, its collections are left to
    :func:`collect_if_due` (the automatic ones only as a safety net), and the allocator keeps
    message buffers (:func:`tune_allocator`)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_AUTOMATIC, *GC_OLDER)
    tune_allocator()


def due_generation(
    counts: tuple[int, int, int], young: int = GC_YOUNG, older: tuple[int, int] = GC_OLDER
) -> int | None:
    """The generation a collection should take now, given :func:`gc.get_count`'s
    ``counts``, as CPython picks it (the oldest whose count passed its threshold, once the
    young one is due); None when none is due."""
    if counts[0] < young:
        return None
    if counts[1] < older[0]:
        return 0
    return 2 if counts[2] >= older[1] else 1


def collect_if_due(young: int = GC_YOUNG) -> int | None:
    """Run the garbage collection that is due, if any (see :func:`due_generation`); the
    generation collected, or None. Nothing while the collector is disabled."""
    if not gc.isenabled():
        return None
    generation = due_generation(gc.get_count(), young)
    if generation is not None:
        gc.collect(generation)
    return generation
