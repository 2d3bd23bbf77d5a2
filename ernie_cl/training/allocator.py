"""Keeping freed memory in the process for the next step's tensors (``training.reuse_heap``, on by default).

Why: a CPU training step allocates and frees the same large tensors every step (activations,
attention scores, the vocabulary logits). glibc's malloc serves a block above its mmap threshold
(dynamic, at most 32 MiB) with fresh pages from the kernel and unmaps it on free, and it hands the
free top of its heap back to the kernel (trim threshold, at most 64 MiB). Either way the next step's
tensor lands on new pages, and the kernel faults in and zeroes every 4 KiB page on first touch: in a
masking step of the benchmark model that was 45,000-52,000 page faults and 0.07-0.09 s of kernel
time, against 2,600-4,200 and about 0.01 s with this (README, "Performance"). Raising both thresholds
keeps freed blocks in the heap, where the next step reuses them. What is computed does not change,
only where tensors lie.

It also limits glibc to one arena: threads that first allocate after this share the main heap. A
step's ops run partly on torch's OpenMP worker; with its own arena, blocks freed there are kept too
but are reused only by that thread, and the demo's peak resident memory was 2.3-2.9 GB instead of
1.85-1.9 GB (README, "Performance"). So the trainer applies it when it builds the model, before the
model's first parallel op starts the workers (threads already holding an arena keep it), and again
when the engine is created (for callers that bring their own model).

The cost: memory a step freed stays with the process (its resident size holds at the step's high-water
mark instead of falling between steps). And since batch shapes vary from step to step, freed blocks
that the next steps do not fit into pile up: a 400-step probe grew from 1.06 to 1.78 GB with its live
tensors constant at 29 MB. So every ``TRIM_EVERY_STEPS`` steps the trainer hands the heap's free pages
back (``release_free_memory``, glibc's ``malloc_trim``): the probe then held 1.13-1.26 GB. The step
after a trim faults its pages in again, once per 100 steps. Only glibc is tuned (``mallopt``); with
another C library, or where it is not found, this does nothing.
"""

from __future__ import annotations

import ctypes

_M_TRIM_THRESHOLD = -1  # glibc's mallopt parameter numbers (malloc.h)
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8
# blocks up to 1 GiB come from the heap; a free heap top goes back to the kernel only past 2 GiB
# (mallopt takes a C int: 2**31 - 1 is the most it can say)
MMAP_THRESHOLD = 1 << 30
TRIM_THRESHOLD = 2**31 - 1
TRIM_EVERY_STEPS = 100


def _glibc(name: str, argtypes: list):
    """A function of the C library this process runs on (its own symbols: no ldconfig search), or
    None when that library is not glibc."""
    try:
        function = getattr(ctypes.CDLL(None), name)
    except (OSError, AttributeError):
        return None
    function.argtypes, function.restype = argtypes, ctypes.c_int
    return function


def keep_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds and limit it to one arena, for this process (and
    processes it forks later). Returns whether glibc accepted both thresholds."""
    mallopt = _glibc("mallopt", [ctypes.c_int, ctypes.c_int])
    if mallopt is None:
        return False
    mallopt(_M_ARENA_MAX, 1)  # threads already attached to an arena keep it
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))


def release_free_memory() -> bool:
    """Hand the free pages of glibc's heap (every arena) back to the kernel; live blocks stay where
    they are. Returns whether there was a glibc to ask."""
    trim = _glibc("malloc_trim", [ctypes.c_size_t])
    if trim is None:
        return False
    trim(0)
    return True
