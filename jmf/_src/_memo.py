"""A bounded memo that records what it made: the one mechanism behind memoized solver and loss factories.

A factory that returns the same object for the same arguments lets JAX's
caches (keyed on the object) reuse compiled programs; the registry of what
was made, by id, lets a recipe describe the object in another process.
"""

from __future__ import annotations

import collections
from typing import Any, Callable, Hashable

# Objects kept per factory: least recently used ones are dropped past this (with their registry entries).
KEPT = 256


def memo_cache() -> collections.OrderedDict:
    return collections.OrderedDict()


def remembered(cache: collections.OrderedDict, registry: dict, origin: Any, key: Hashable, make: Callable) -> Any:
    """``cache[key]``, or ``make()`` kept there with ``registry[id(obj)] = (origin, key, obj)`` while it is kept."""
    if key in cache:
        cache.move_to_end(key)
        return cache[key]
    obj = cache[key] = make()
    registry[id(obj)] = (origin, key, obj)
    if len(cache) > KEPT:
        _, dropped = cache.popitem(last=False)
        if registry.get(id(dropped), (None, None, None))[2] is dropped:
            del registry[id(dropped)]
    return obj
