"""Keep freed heap memory inside the process while models run on the CPU (glibc).

Why: glibc's malloc serves every buffer above its mmap threshold (at most 32 MiB) with a
fresh ``mmap`` and gives it back with ``munmap`` as soon as it is freed. A batched
Grounding DINO forward on the CPU allocates many such activations, so every forward
faults in ~200 k fresh zeroed pages per image; measured on the mid-size model at batch
8, that made each image 0.85 s instead of 0.40-0.50 s (benchmarks/RESULTS.md). With
mmap off and trimming off, freed blocks are reused by the next batch instead.

The cost: the process keeps its peak heap (one batch's activations) rather than
returning it to the OS between batches, which a labeling worker would allocate again at
once.
Set ``AUTOLABEL_MALLOC_TUNING=0`` to leave the allocator as it is.
"""

from __future__ import annotations

import ctypes
import os
import sys
import threading

# mallopt parameters from glibc's <malloc.h>.
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_NEVER = -1  # mallopt takes an int; glibc reads the trim threshold as size_t: SIZE_MAX

_lock = threading.Lock()
_applied: bool | None = None


def keep_freed_memory() -> bool:
    """Tell glibc to keep large freed blocks for reuse; True once it is in effect.

    Idempotent and cheap after the first call. Does nothing (False) off Linux, on a C
    library other than glibc (musl), or with ``AUTOLABEL_MALLOC_TUNING=0``.
    """
    global _applied
    with _lock:
        if _applied is None:
            _applied = _apply()
        return _applied


def _apply() -> bool:
    if os.environ.get("AUTOLABEL_MALLOC_TUNING", "1") == "0":
        return False
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.gnu_get_libc_version  # noqa: B018 - present in glibc only
    except (OSError, AttributeError):
        return False
    no_mmap = libc.mallopt(_M_MMAP_MAX, 0) == 1
    no_trim = libc.mallopt(_M_TRIM_THRESHOLD, _NEVER) == 1
    return no_mmap and no_trim
