"""Writing a program into a full persistent compilation cache: JAX's LRU cache against jmf's running total.

JAX's size-bounded cache scans every entry of its folder on each write (to decide whether to evict),
holding the folder's lock; jmf's folder keeps a running total of its bytes and scans only near the limit
(``jmf._src.compilation``).  This times one write (``put``) into folders of N entries, as a folder that
has cached N programs holds, for both, and the scan jmf does when the limit is reached.

    python benchmarks/cache_writes.py [--entries 1000 10000 40000] [--writes 20]

Entries are sparse files of 32 KiB (about the average of the cached programs of the test suite);
a scan reads the directory and the entries' sizes and times, not their bytes.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from _common import table  # noqa: E402

ENTRY_BYTES = 32 << 10


def _fill(folder: str, n: int) -> None:
    for i in range(n):
        with open(os.path.join(folder, f"prog{i:06d}-cache"), "wb") as fh:
            fh.truncate(ENTRY_BYTES)
        with open(os.path.join(folder, f"prog{i:06d}-atime"), "wb") as fh:
            fh.write(time.time_ns().to_bytes(8, "little"))


def _put_times(cls, folder: str, writes: int, max_size: int) -> list:
    cache = cls(folder, max_size=max_size)
    value = os.urandom(ENTRY_BYTES)
    times = []
    for i in range(writes):
        t0 = time.perf_counter()
        cache.put(f"new{i:04d}", value)
        times.append(time.perf_counter() - t0)
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--entries", type=int, nargs="+", default=[1000, 10000, 40000])
    ap.add_argument("--writes", type=int, default=20)
    args = ap.parse_args()
    from jax._src.lru_cache import LRUCache

    from jmf._src.compilation import CACHE_MAX_BYTES, _scan_and_evict, _tallied

    tallied = _tallied(LRUCache)
    rows = []
    for n in args.entries:
        row = {"entries": n}
        for name, cls in (("JAX LRUCache", LRUCache), ("jmf", tallied)):
            with tempfile.TemporaryDirectory() as folder:
                _fill(folder, n)
                # the first write of a folder without a total counts it (jmf), as every write does (JAX)
                times = _put_times(cls, folder, args.writes, CACHE_MAX_BYTES)
            row[f"{name} first ms"] = 1e3 * times[0]
            row[f"{name} median ms"] = 1e3 * statistics.median(times[1:])
        with tempfile.TemporaryDirectory() as folder:
            _fill(folder, n)
            t0 = time.perf_counter()
            _scan_and_evict(folder, n * ENTRY_BYTES // 2)  # evict half: the scan and the unlinks
            row["jmf scan+evict half ms"] = 1e3 * (time.perf_counter() - t0)
        rows.append(row)
        print(f"{n} entries done", file=sys.stderr)
    print(table(rows, floatfmt=".3g"))
    print(f"\n{args.writes} writes of {ENTRY_BYTES >> 10} KiB per folder; median over all but the first write.")


if __name__ == "__main__":
    main()
