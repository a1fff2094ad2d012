"""Cached CanHandle decisions: a driver is asked once per volume set, not per take.

CanHandle is pure by contract (DESIGN.md, "StorageDriver"): the same driver,
asked about the same volumes with the same operation and options, answers the
same. So a plan may reuse an earlier answer instead of a round trip on the
critical path of every take. An answer is reused only while all of these hold:

- the driver is the same *registration* in the same *state*: every
  :class:`~vmsnap_host.registry.Peer` has a ``generation`` that is new for each
  registration and moves on whenever its health or its announced info changes
  (a re-registered, restarted or upgraded driver is asked again);
- the key matches exactly: VM id, every volume (disk, locator, size, format,
  native flag), the operation and the request's options;
- it is younger than ``ttl`` seconds (an array's own view may change without
  the driver's info changing: a volume moved to another array);
- no take planned from it failed since (:meth:`DecisionCache.forget_vm`).

Only answers that passed the contract checks are kept; a failure, a timeout or
a malformed answer is never cached (the next plan asks again).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Mapping

from vmsnap_sdk import VM, Operation, VolumeDecision

#: Answers kept per driver (least recently used dropped first): 10k VMs with a
#: few option sets each.
DEFAULT_MAX_ENTRIES = 65_536

Key = tuple[Hashable, ...]


def decision_key(vm: VM, operation: Operation, options: Mapping[str, str]) -> Key:
    """What a pure CanHandle answer depends on (the driver aside)."""
    return (
        vm.id,
        tuple(
            (v.disk, v.locator, v.size_bytes, v.format, bool(getattr(v, "native_snapshot", False)))
            for v in vm.volumes
        ),
        operation,
        tuple(sorted(options.items())),
    )


class _DriverAnswers:
    __slots__ = ("answers", "by_vm", "generation")

    def __init__(self, generation: int) -> None:
        self.generation = generation
        #: key → (monotonic time stored, the checked decisions by disk)
        self.answers: OrderedDict[Key, tuple[float, Mapping[str, VolumeDecision]]] = OrderedDict()
        self.by_vm: dict[Hashable, set[Key]] = {}

    def drop(self, key: Key) -> None:
        self.answers.pop(key, None)
        keys = self.by_vm.get(key[0])
        if keys is not None:
            keys.discard(key)
            if not keys:
                del self.by_vm[key[0]]


class DecisionCache:
    """Checked CanHandle answers per driver registration (see the module docstring).

    ``ttl`` 0 turns the cache off (every plan asks every driver)."""

    def __init__(
        self,
        ttl: float,
        max_entries: int = DEFAULT_MAX_ENTRIES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        self._clock = clock
        self._drivers: dict[str, _DriverAnswers] = {}  # by driver address
        self.hits = 0
        self.misses = 0

    def get(self, driver: str, generation: int, key: Key) -> Mapping[str, VolumeDecision] | None:
        if self.ttl <= 0:
            return None
        answers = self._drivers.get(driver)
        if answers is None or answers.generation != generation:
            self.misses += 1
            return None
        found = answers.answers.get(key)
        if found is None or self._clock() - found[0] > self.ttl:
            if found is not None:
                answers.drop(key)
            self.misses += 1
            return None
        answers.answers.move_to_end(key)
        self.hits += 1
        return found[1]

    def put(
        self, driver: str, generation: int, key: Key, decisions: Mapping[str, VolumeDecision]
    ) -> None:
        if self.ttl <= 0:
            return
        answers = self._drivers.get(driver)
        if answers is not None and answers.generation > generation:
            return  # asked before the driver's state moved on: already void
        if answers is None or answers.generation != generation:
            # A new registration or a change of state: what the old one said is void.
            answers = self._drivers[driver] = _DriverAnswers(generation)
        answers.answers[key] = (self._clock(), dict(decisions))
        answers.answers.move_to_end(key)
        answers.by_vm.setdefault(key[0], set()).add(key)
        while len(answers.answers) > self.max_entries:
            answers.drop(next(iter(answers.answers)))

    def forget_vm(self, vm_id: str) -> None:
        """Drop every answer about this VM (a take planned from them failed)."""
        for answers in self._drivers.values():
            for key in list(answers.by_vm.get(vm_id, ())):
                answers.drop(key)

    def forget_driver(self, driver: str) -> None:
        self._drivers.pop(driver, None)

    def __len__(self) -> int:
        return sum(len(a.answers) for a in self._drivers.values())
