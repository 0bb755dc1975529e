"""Decoding the next chunk's first images while this chunk's last batches run.

Every chunk starts with a fill: its first images must be decoded and its first batch
prepared before the model runs at all. Between two chunks of one run the model would
wait for that fill, plus the previous chunk's drain and shard writes: measured at
~0.3 s per boundary with 1280x960 photos on 2 cores, b/a 0.92 in one chunk vs 0.84 in
chunks of 128 (benchmarks/RESULTS.md, "Chunk boundaries"). So a chunk's labeling loop,
once it has decoded its own last image, starts decoding the first window of the chunk
labeled next, and that chunk's loop takes those images instead of decoding them again.

Decoding is a pure function of the file, so no label can depend on this; an image the
next loop does not expect (another chunk, or a download that came out differently) is
decoded again as usual. Shards stay independent: nothing but pixels crosses the
boundary, and only forward.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from tasks.images import DecodedAhead, ImageRef, decode_image
from tasks.sources import SourceOptions, localize_one


class DecodeAhead:
    """The decoded head of the chunk labeled next, handed from one chunk task to the
    next within one run (one process).

    Holds one window at most (what the last ``start`` was given); ``take`` hands it over
    once. Use it as a context manager around the run's chunk loop: leaving drops what
    no chunk took (the run stopped at its budget, or failed) and stops its threads.
    """

    def __init__(
        self, out: str | Path, sources: SourceOptions | None = None, workers: int = 4
    ) -> None:
        self._out = out
        self._sources = sources or SourceOptions()
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="decode-ahead")
        self._lock = threading.Lock()
        self._ahead: dict[str, Future[DecodedAhead]] = {}

    def start(self, refs: Sequence[ImageRef]) -> None:
        """Begin localizing and decoding ``refs`` in the background; forgets (and lets
        finish) what an earlier call started and nobody took."""
        futures = {ref.uri: self._pool.submit(self._decode, ref) for ref in refs}
        with self._lock:
            self._ahead = futures

    def take(self) -> dict[str, Future[DecodedAhead]]:
        """What ``start`` began, by image URI; empty the second time."""
        with self._lock:
            taken, self._ahead = self._ahead, {}
        return taken

    def _decode(self, ref: ImageRef) -> DecodedAhead:
        local = localize_one(ref, self._out, self._sources)
        return local, decode_image(local)

    def __enter__(self) -> DecodeAhead:
        return self

    def __exit__(self, *exc: object) -> None:
        self.take()
        self._pool.shutdown(wait=True, cancel_futures=True)
