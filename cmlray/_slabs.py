"""Workers of one shape sharing slabs: what one worker reserves, and how slabs are sized.

A *shape* is what one worker reserves (cpu, memory, GPUs, accelerator); a
*slab* is one placement group with a single bundle of ``k`` times a shape,
on one node, whose ``k`` slots workers of that shape take in turn (see
``_reservations.py`` for why). Pure functions and plain data: no Ray.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from cmlray._spec import WorkerSpec

SLAB_CPU = 1.0
SLAB_MEMORY_BYTES = 2 << 30
_EPSILON = 1e-9


@dataclass(frozen=True)
class Shape:
    """What one worker reserves, in Ray's units."""

    cpu: float
    memory_bytes: int
    gpu: int = 0
    accelerator: str | None = None

    @classmethod
    def of(cls, spec: WorkerSpec) -> Shape:
        return cls(spec.cpu, spec.memory_bytes, spec.nvidia_gpu, spec.accelerator_type)

    def bundle(self, slots: int = 1) -> dict[str, float]:
        """The bundle of ``slots`` workers of this shape."""
        resources = {"CPU": self.cpu * slots, "memory": float(self.memory_bytes * slots)}
        if self.gpu:
            resources["GPU"] = float(self.gpu * slots)
        if self.accelerator:  # as Ray's own accelerator_type option: a sliver of the marker
            resources[f"accelerator_type:{self.accelerator}"] = 0.001 * slots
        return resources

    def slab_slots(self) -> int:
        """Slots of a full slab: small workers share one, a core or more get one each."""
        if self.gpu:
            return 1
        by_cpu = math.floor(SLAB_CPU / self.cpu + _EPSILON)
        by_memory = SLAB_MEMORY_BYTES // max(1, self.memory_bytes)
        return max(1, min(by_cpu, by_memory))

    def fits(self, free: dict[str, float]) -> int:
        """How many workers of this shape ``free`` resources hold."""
        counts = [
            math.floor((free.get(name, 0.0) + _EPSILON) / amount)
            for name, amount in self.bundle().items()
            if amount > 0
        ]
        return max(0, min(counts)) if counts else 0


@dataclass(eq=False)
class Slab:
    """One placement group of ``size`` slots of one shape."""

    group: Any
    shape: Shape
    size: int
    node_id: str | None = None
    gpus: list[str] = field(default_factory=list)
    free: list[int] = field(default_factory=list)
    holders: dict[str, int] = field(default_factory=dict)  # worker id -> slot
    idle_since: float | None = None

    def slot_gpus(self, slot: int) -> tuple[str, ...]:
        per = self.shape.gpu
        return tuple(self.gpus[slot * per : (slot + 1) * per])


def plan_slabs(shape: Shape, count: int, room: dict[str, dict[str, float]]) -> list[int]:
    """Slab sizes for ``count`` workers: filling the nodes' free room first, largest first."""
    full = shape.slab_slots()
    sizes: list[int] = []
    for free in sorted(room.values(), key=shape.fits, reverse=True):
        fits = shape.fits(free)
        while fits > 0 and count > 0:
            size = min(full, fits, count)
            sizes.append(size)
            fits -= size
            count -= size
    while count > 0:  # no room now: asks Ray (or an autoscaler) fills later
        size = min(full, count)
        sizes.append(size)
        count -= size
    return sizes
