"""Read tiles in worker threads ahead of the model, straight into reusable (pinned) batch buffers.

Tile decoding (tifffile + imagecodecs) releases the GIL, so a few threads keep up with a GPU.
Batch ``n`` is read into buffer slot ``n % slots`` while earlier batches are on the device; a
slot is refilled only after the host-to-device copy that read it has finished (its CUDA event).
"""

from __future__ import annotations

from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable, Generic, Iterator, Sequence, TypeVar

import numpy as np
import torch

Item = TypeVar("Item")


class TileLoader(Generic[Item]):
    """Yields ``(items, batch)`` with ``batch`` a (B, tile, tile, 3) uint8 tensor.

    ``read(item)`` returns one (tile, tile, 3) uint8 array. With ``full_batches`` a short last
    batch still comes as ``batch_size`` tiles (the rows past ``len(items)`` are stale), so a
    compiled model never sees a new shape. After handing a batch to the device
    the consumer calls :meth:`release` (with the CUDA event recorded after the copy) before
    asking for the next batch.
    """

    def __init__(
        self,
        items: Sequence[Item],
        read: Callable[[Item], np.ndarray],
        *,
        tile: int,
        batch_size: int,
        workers: int = 2,
        pin_memory: bool = False,
        prefetch_batches: int = 2,
        full_batches: bool = False,
    ):
        if batch_size < 1:
            raise ValueError(f"batch size must be at least 1, got {batch_size}")
        if prefetch_batches < 1:
            raise ValueError(f"prefetch_batches must be at least 1, got {prefetch_batches}")
        self.items, self.read = list(items), read
        self.tile, self.batch_size = tile, batch_size
        self.workers = max(1, workers)
        self.slots = prefetch_batches + 1
        self.pin_memory = pin_memory
        self.full_batches = full_batches
        self._events: list = [None] * self.slots
        self._pending_release: int | None = None

    def __len__(self) -> int:
        return -(-len(self.items) // self.batch_size)

    def release(self, event: "torch.cuda.Event | None" = None) -> None:
        """The last batch's buffer may be refilled once ``event`` (if any) has completed."""
        if self._pending_release is not None:
            self._events[self._pending_release] = event
            self._pending_release = None

    def __iter__(self) -> Iterator[tuple[list[Item], torch.Tensor]]:
        b = self.batch_size
        batches = [self.items[i:i + b] for i in range(0, len(self.items), b)]
        buffers: list[torch.Tensor | None] = [None] * self.slots
        pending: deque[tuple[int, list[Future]]] = deque()
        pool = ThreadPoolExecutor(self.workers, thread_name_prefix="samlung-read")

        def fill(slot: int, index: int, item: Item) -> None:
            event = self._events[slot]
            if event is not None:
                event.synchronize()
            tile = self.read(item)
            if tile.shape != (self.tile, self.tile, 3):
                raise ValueError(f"tile reader returned shape {tile.shape}, expected {(self.tile, self.tile, 3)}")
            buffers[slot][index].numpy()[...] = tile

        def submit(n: int) -> None:
            slot = n % self.slots
            if buffers[slot] is None:
                buffers[slot] = torch.empty((b, self.tile, self.tile, 3), dtype=torch.uint8,
                                            pin_memory=self.pin_memory)
            pending.append((slot, [pool.submit(fill, slot, i, item) for i, item in enumerate(batches[n])]))

        try:
            for n in range(min(self.slots - 1, len(batches))):
                submit(n)
            for n, items in enumerate(batches):
                slot, futures = pending.popleft()
                for f in futures:
                    f.result()
                self._pending_release = slot
                yield items, buffers[slot] if self.full_batches else buffers[slot][:len(items)]
                if n + self.slots - 1 < len(batches):
                    submit(n + self.slots - 1)  # into the slot of batch n - 1, released by now
        finally:
            for _, futures in pending:
                for f in futures:
                    f.cancel()
            pool.shutdown(wait=True, cancel_futures=True)
