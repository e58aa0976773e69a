"""Compilation: the persistent cache jmf turns on, and counting what gets compiled.

**The cache.** A researcher runs the same scripts again and again; each run
should not pay the XLA compiler again.  ``import jmf`` points JAX's
persistent compilation cache at the user's cache folder
(``platformdirs.user_cache_dir("jmf")/xla``) unless JAX's own cache is
already configured; ``JMF_CACHE_DIR`` chooses another folder and
``JMF_CACHE_DIR=off`` leaves the cache off.  Every compiled program is
cached (no minimum compile time), up to a size limit with least-recently-
used eviction, whose file lock also makes the folder safe to share between
processes.  A cached program is the program the compiler would build, so
the cache never changes a result.

**Without tracing.** JAX finds a cached program by its lowered text, so it
traces and lowers it first.  The executor's programs are also kept under a
description that needs no tracing (:func:`stored_program`), which a warm
process looks up instead.

**Counting.** JAX reports every backend compilation through
:mod:`jax.monitoring`; one listener, registered on first use, keeps running
totals, and :func:`compilations` reads the difference over a block::

    with compilations() as log:
        jmf.fit(...)
    log.count, log.seconds   # after the block
"""

from __future__ import annotations

import contextlib
import heapq
import os
import threading
import time
from dataclasses import dataclass
from typing import Optional

import jax

__all__ = ["CompileLog", "compilations", "totals", "configure_cache", "cache_dir", "CACHE_MAX_BYTES", "memory_maps",
           "release_programs_near_map_limit", "MAP_HEADROOM"]

# Least-recently-used entries are evicted beyond this size.
CACHE_MAX_BYTES = 2 << 30
_OFF = {"off", "0", "false", "no", "none"}


def configure_cache() -> Optional[str]:
    """Turn JAX's persistent compilation cache on in jmf's folder, unless it is configured already or switched off.

    Returns the folder in use (None when the cache is off or left to the
    user's own JAX configuration).
    """
    _ensure_listener()  # programs are counted from jmf's import on (see release_programs_near_map_limit)
    raw = os.environ.get("JMF_CACHE_DIR", "").strip()
    if raw.lower() in _OFF:
        return None
    if jax.config.jax_compilation_cache_dir or os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        return None  # the user configured JAX's cache: theirs wins
    if raw:
        path = os.path.abspath(os.path.expanduser(raw))
    else:
        import platformdirs

        path = os.path.join(platformdirs.user_cache_dir("jmf"), "xla")
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as exc:  # e.g. a read-only home: run without the cache rather than fail
        import warnings

        warnings.warn(f"jmf: compilation cache folder {path!r} is not usable ({exc}); running without it",
                      RuntimeWarning, stacklevel=3)
        return None
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    jax.config.update("jax_compilation_cache_max_size", CACHE_MAX_BYTES)
    _install_tallied_eviction()
    _store["folder"] = path
    # The source digest is taken now, at import, when the modules have just been read: taken later, an edit
    # made while this process runs would label its programs with code it does not run.
    _store["source"] = _source_digest()
    return path


# -- eviction without a scan per write -----------------------------------------------------------

# JAX's size-bounded cache decides on every write whether to evict by scanning the whole folder (a stat
# and a read per entry), holding the folder's lock, so other processes' reads wait as well: the cost of
# a new program grows with everything cached before it (BENCHMARKS.md, cache writes).  jmf's
# folder keeps its size as a running total instead (``.jmf-bytes``, updated under the same lock): a write
# adds its bytes, and the folder is scanned only when the total would pass the limit (or the last scan
# is over a week old, in case something else wrote there).  Eviction is then least recently used, as in
# JAX, down to _LOW_WATER of the limit, so that scans stay rare.
_TALLY = ".jmf-bytes"
_jax_reads = threading.local()  # entries JAX's cache returned while a program is built (see stored_program)
_RESCAN_SECONDS = 7 * 24 * 3600
_LOW_WATER = 0.8
_CACHE_SUFFIX, _ATIME_SUFFIX = "-cache", "-atime"


def _scan_and_evict(folder: str, target: int) -> int:
    """Evict the least recently used entries of ``folder`` until its entries hold at most ``target`` bytes;
    returns the bytes left.  Recency is the modification time of the entry's ``-atime`` file (JAX
    rewrites it on every read and write), read from the directory listing: no file is opened."""
    sizes: dict = {}
    used: dict = {}
    with os.scandir(folder) as it:
        for entry in it:
            name = entry.name
            try:
                if name.endswith(_CACHE_SUFFIX):
                    sizes[name[: -len(_CACHE_SUFFIX)]] = entry.stat().st_size
                elif name.endswith(_ATIME_SUFFIX):
                    used[name[: -len(_ATIME_SUFFIX)]] = entry.stat().st_mtime_ns
            except OSError:  # removed meanwhile by hand
                continue
    total = sum(sizes.values())
    if total <= target:
        return total
    oldest = [(used.get(key, 0), key) for key in sizes]
    heapq.heapify(oldest)
    while total > target and oldest:
        _, key = heapq.heappop(oldest)
        for suffix in (_CACHE_SUFFIX, _ATIME_SUFFIX):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(folder, key + suffix))
        total -= sizes[key]
    return total


def _account_write(folder: str, additional: int, max_size: int) -> None:
    """Add ``additional`` bytes about to be written to the folder's running total, evicting first when the
    total would pass ``max_size`` (the caller holds the folder's lock)."""
    tally = os.path.join(folder, _TALLY)
    now = int(time.time())
    try:
        with open(tally) as fh:
            size, scanned = (int(x) for x in fh.read().split())
    except (OSError, ValueError):  # first write, or a torn tally: count again
        size, scanned = None, 0
    if size is None or size + additional > max_size or now - scanned > _RESCAN_SECONDS:
        size = _scan_and_evict(folder, max(int(_LOW_WATER * max_size) - additional, 0))
        scanned = now
    with open(tally, "w") as fh:
        fh.write(f"{size + additional} {scanned}")


def _tallied(base: type) -> type:
    class TalliedLRUCache(base):
        """JAX's LRU cache with the folder's size kept as a running total (see ``_TALLY``)."""

        def _evict_if_needed(self, *, additional_size: int = 0) -> None:
            # Called by put() holding the folder's lock, before the new entry is written.
            folder = str(self.path)
            if not getattr(self, "eviction_enabled", False) or "://" in folder:  # not a local folder: JAX's way
                return super()._evict_if_needed(additional_size=additional_size)
            _account_write(folder, additional_size, self.max_size)

        def get(self, key: str):
            value = super().get(key)
            reads = getattr(_jax_reads, "log", None)
            if reads is not None and value is not None:
                reads.append(value)
            return value

    TalliedLRUCache.__name__ = TalliedLRUCache.__qualname__ = "TalliedLRUCache"
    return TalliedLRUCache


def _install_tallied_eviction() -> bool:
    """Make the cache folder JAX opens next a :class:`TalliedLRUCache`; False if JAX's internals differ.

    JAX builds its cache object on the first compilation, from the class ``LRUCache`` of
    ``jax._src.compilation_cache``; jmf configures the folder before that, so the class is swapped here.
    Only when jmf configures the cache: a user who configured JAX's own keeps JAX's class.
    """
    try:
        from jax._src import compilation_cache as cc
    except ImportError:
        return False
    base = getattr(cc, "LRUCache", None)
    if not isinstance(base, type) or not callable(getattr(base, "_evict_if_needed", None)):
        return False
    if base.__name__ != "TalliedLRUCache":
        cc.LRUCache = _tallied(base)
    return True


# -- compiled programs found without tracing them ----------------------------------------------------

# JAX finds a program in its persistent cache by the hash of the lowered program, so a warm process still
# traces and lowers every program before loading it (most of a warm `jmf fit`'s overhead, BENCHMARKS.md).  jmf's
# executor describes its programs without tracing them (the solver's factory and arguments, the plan, the
# arguments' types and placement) and keeps the compiled executables under that description, in the same
# folder (entries named ``jmfprog-...-cache``, counted and evicted with JAX's).  The description also
# holds everything else a program depends on: a digest of jmf's source files, the versions of jax, jaxlib,
# numpy and optax, JAX's tracing configuration, XLA_FLAGS and the devices.  A loaded program is the very
# executable the compiler built, and JAX checks every call's argument types against it.
STORE_PROGRAMS = True  # tests that count traces turn this off
_store: dict = {"folder": None, "environment": None}


class _Programs(dict):
    """Loaded programs by description digest; emptied by ``jax.clear_caches()`` like JAX's own caches."""

    __hash__ = object.__hash__  # JAX registers caches in a weak-key dictionary: by identity
    __eq__ = object.__eq__

    def cache_clear(self) -> None:
        self.clear()

    def cache_info(self) -> str:
        return f"{len(self)} stored programs loaded"

    def cache_keys(self) -> list:
        return list(self)


_programs = _Programs()
try:
    from jax._src import util as _jax_util

    _jax_util.register_cache(_programs, "jmf stored programs")
except (ImportError, AttributeError):  # an older JAX: emptied near the map limit only
    pass
_PROGRAM_PREFIX = "jmfprog-"


def _source_digest() -> str:
    import hashlib

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the jmf package
    h = hashlib.sha256()
    for folder, dirs, files in sorted(os.walk(root)):
        dirs.sort()
        for name in sorted(files):
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                h.update(os.path.relpath(path, root).encode())
                with open(path, "rb") as fh:
                    h.update(fh.read())
    return h.hexdigest()


def _environment() -> tuple:
    if _store["environment"] is None:
        import importlib.metadata as md

        versions = []
        for dist in ("jax", "jaxlib", "numpy", "optax"):
            try:
                versions.append((dist, md.version(dist)))
            except md.PackageNotFoundError:
                versions.append((dist, None))
        client = getattr(jax.devices()[0], "client", None)
        source = _store.get("source") or _source_digest()
        _store["environment"] = (source, tuple(versions), os.environ.get("XLA_FLAGS", ""), jax.default_backend(),
                                 str(getattr(client, "platform_version", "")),
                                 tuple((d.id, d.device_kind) for d in jax.devices()), jax.process_count(),
                                 _host_cpu())
    return _store["environment"]


def _host_cpu() -> str:
    """The host CPU's model and instruction-set flags: XLA:CPU compiles for the features of the machine, and
    a cache folder may be shared by machines of another kind (a network home)."""
    import platform

    try:
        with open("/proc/cpuinfo") as fh:
            lines = [line for line in fh if line.startswith(("model name", "flags", "Features"))]
        info = "".join(sorted(set(lines)))
    except OSError:
        info = ""
    return f"{platform.machine()} {platform.processor()} {info}"


def _tracing_context() -> Optional[tuple]:
    """JAX's configuration that tracing depends on (x64, promotion rules, ...), as plain values."""
    try:
        from jax._src.config import trace_context
    except ImportError:
        return None
    out = []
    for v in trace_context():
        if v is None or isinstance(v, (bool, int, float, str)):
            out.append(v)
        elif isinstance(v, tuple) and all(x is None or isinstance(x, (bool, int, float, str)) for x in v):
            out.append(v)
        elif hasattr(v, "value") and isinstance(getattr(v, "value"), (bool, int, float, str)):  # enums
            out.append((type(v).__name__, v.value))
        elif type(v).__name__ == "AxisEnv":  # empty at top level, where jmf's programs are built
            if getattr(v, "axis_sizes", None) or getattr(v, "spmd_axis_names", None) or getattr(
                    v, "explicit_mesh_axis_names", None):
                return None
            out.append("AxisEnv()")
        elif " at 0x" not in repr(v):  # e.g. the abstract mesh of a `with jax.set_mesh(...)` block
            out.append((type(v).__name__, repr(v)))
        else:  # no stable description: nothing is stored or looked up
            return None
    return tuple(out)


def _lapack_ready() -> bool:
    """Initialize jaxlib's CPU LAPACK kernels, which JAX does only while lowering a program that uses them: a
    loaded program that was never lowered in this process would call uninitialized kernels."""
    if "lapack" not in _store:
        try:
            from jax._src.lib import lapack

            lapack._lapack.initialize()
            _store["lapack"] = True
        except Exception:
            _store["lapack"] = False
    return _store["lapack"]


def _program_digest(name: str, description) -> Optional[str]:
    if not STORE_PROGRAMS or _store["folder"] is None or description is None or cache_dir() != _store["folder"]:
        return None
    # CPU only: the platform whose kernels jmf makes ready (above) and tests (GPU and TPU programs still
    # come from JAX's cache, after tracing).
    if jax.default_backend() != "cpu":
        return None
    context = _tracing_context()
    if context is None:
        return None
    import hashlib

    return hashlib.sha256(repr((_environment(), context, name, description)).encode()).hexdigest()


def _record_load() -> None:
    with _lock:
        _totals["programs"] += 1
        _totals["cache_hits"] += 1


def stored_program(name: str, description, build):
    """The compiled program ``build()`` makes, found by ``description`` without tracing; None when not stored.

    ``description``: a plain value (nested tuples of numbers and strings) that determines the program
    together with the environment (see above), or None.  ``build()`` lowers and compiles the program (as
    JAX would, through its persistent cache) and returns a ``jax.stages.Compiled``.  Returns None, and
    builds nothing, when programs are not stored (jmf's cache is off, or no description).
    """
    digest = _program_digest(name, description)
    if digest is None:
        return None
    program = _programs.get(digest)
    if program is not None:
        return program
    folder = _store["folder"]
    base = os.path.join(folder, f"{_PROGRAM_PREFIX}{name}-{digest}")
    program = _load_program(base)
    if program is not None:
        _record_load()
    else:
        _jax_reads.log = []
        try:
            program = build()
            reads = _jax_reads.log
        finally:
            _jax_reads.log = None
        _save_program(base, program, folder, reads[-1] if reads else None)
    _programs[digest] = program
    return program


def stored_fact(name: str, description, build):
    """A JSON value ``build()`` computes about a program (e.g. which custom calls it makes), kept like a
    program (see :func:`stored_program`); ``build()`` itself when programs are not stored."""
    import json

    digest = _program_digest(name, description)
    if digest is None:
        return build()
    base = os.path.join(_store["folder"], f"{_PROGRAM_PREFIX}{name}-{digest}")
    try:
        with open(base + _CACHE_SUFFIX) as fh:
            return json.loads(fh.read())["value"]
    except (OSError, ValueError, KeyError, TypeError):
        pass
    value = build()
    _write_entry(base, json.dumps({"value": value}).encode(), _store["folder"])
    return value


def _load_program(base: str):
    import pickle

    from jax._src import compilation_cache
    from jax.experimental.serialize_executable import deserialize_and_load

    try:
        with open(base + _CACHE_SUFFIX, "rb") as fh:
            blob = compilation_cache.decompress_executable(fh.read())
        payload, in_tree, out_tree, device_ids, lapack = pickle.loads(blob)
        if lapack and not _lapack_ready():
            return None
        by_id = {d.id: d for d in jax.devices()}
        program = deserialize_and_load(payload, in_tree, out_tree,
                                       execution_devices=[by_id[i] for i in device_ids])
    except FileNotFoundError:
        return None
    except Exception:  # torn or unreadable entry: build it again (and overwrite it)
        return None
    with contextlib.suppress(OSError):
        with open(base + _ATIME_SUFFIX, "wb") as fh:
            fh.write(time.time_ns().to_bytes(8, "little"))
    return program


def _save_program(base: str, program, folder: str, jax_entry: Optional[bytes]) -> None:
    """Store ``program``; ``jax_entry``: the entry of JAX's cache it was loaded from, if it was.

    An executable loaded from a cache does not serialize again whole (XLA:CPU's second serialization
    lost code: the program failed with "Function ... not found"), so a loaded program is stored with the
    bytes JAX's cache held, and a compiled one with its own serialization.
    """
    import io
    import pickle

    try:
        from jax._src import compilation_cache
        from jax.experimental.serialize_executable import _JaxPjrtPickler

        unloaded = getattr(program._executable, "_unloaded_executable", None)
        if unloaded is None or getattr(unloaded, "host_callbacks", None) or getattr(unloaded, "ordered_effects",
                                                                                    None):
            return  # host callbacks are registered while lowering: such a program must be lowered (JAX's cache
            # does not keep them either)
        if getattr(getattr(program, "_params", None), "const_args", None):
            return
        exe_bytes = None
        if jax_entry is not None:
            exe_bytes, _ = compilation_cache.extract_executable_and_time(
                compilation_cache.decompress_executable(jax_entry))

        class Pickler(_JaxPjrtPickler):
            def persistent_id(self, obj):
                if exe_bytes is not None and isinstance(obj, unloaded.xla_executable.__class__):
                    return ("exec", exe_bytes)
                return super().persistent_id(obj)

        args_info_flat, in_tree = jax.tree_util.tree_flatten(program.args_info)
        with io.BytesIO() as fh:
            Pickler(fh).dump((unloaded, args_info_flat, program._no_kwargs))
            payload = fh.getvalue()
        # the devices it runs on (loaded without them, a one-device program would expect every device)
        device_ids = [d.id for d in program.runtime_executable().local_devices()]
        # whether it calls LAPACK (its kernels are named in the object code): initialized before loading it,
        # a cost (it loads scipy's LAPACK) that other programs need not pay
        lapack = b"lapack" in payload
        blob = compilation_cache.compress_executable(
            pickle.dumps((payload, in_tree, program.out_tree, device_ids, lapack)))
    except Exception:  # an executable that cannot be serialized: not stored
        return
    _write_entry(base, blob, folder)


def _write_entry(base: str, blob: bytes, folder: str) -> None:
    """Write an entry atomically, counted in the folder's total under JAX's lock of the folder."""
    import tempfile

    try:
        import filelock

        with filelock.FileLock(os.path.join(folder, ".lockfile"), timeout=10):
            _account_write(folder, len(blob), int(jax.config.jax_compilation_cache_max_size))
            fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-")
            with os.fdopen(fd, "wb") as fh:
                fh.write(blob)
            os.replace(tmp, base + _CACHE_SUFFIX)
            with open(base + _ATIME_SUFFIX, "wb") as fh:
                fh.write(time.time_ns().to_bytes(8, "little"))
    except Exception:  # a full disk, a lock held too long: run without storing
        return


def cache_dir() -> Optional[str]:
    """The persistent compilation cache folder JAX uses now (None if off)."""
    return jax.config.jax_compilation_cache_dir or os.environ.get("JAX_COMPILATION_CACHE_DIR") or None

_BACKEND_COMPILE = "/jax/core/compile/backend_compile_duration"
# Tracing and lowering to XLA are part of what a user waits for before a program runs.
_FRONT_END = ("/jax/core/compile/jaxpr_trace_duration", "/jax/core/compile/jaxpr_to_mlir_module_duration")
_CACHE_HIT = "/jax/compilation_cache/cache_hits"
_lock = threading.Lock()
_totals = {"programs": 0, "cache_hits": 0, "seconds": 0.0}
_registered = False


def _on_duration(event: str, duration: float, **_) -> None:
    if event == _BACKEND_COMPILE or event in _FRONT_END:
        with _lock:
            _totals["seconds"] += duration
            if event == _BACKEND_COMPILE:
                _totals["programs"] += 1


def _on_event(event: str, **_) -> None:
    if event == _CACHE_HIT:
        with _lock:
            _totals["cache_hits"] += 1


def _ensure_listener() -> None:
    global _registered
    with _lock:
        if not _registered:
            jax.monitoring.register_event_duration_secs_listener(_on_duration)
            jax.monitoring.register_event_listener(_on_event)
            _registered = True


def totals() -> dict:
    """Running totals since the listener started: programs built (compiled or loaded from the
    persistent cache), of which ``cache_hits`` came from the cache, and seconds of tracing,
    lowering and compiling."""
    _ensure_listener()
    with _lock:
        return dict(_totals)


@dataclass
class CompileLog:
    """What a :func:`compilations` block built (filled in when the block ends).

    ``programs`` were obtained, ``cache_hits`` of them from the persistent
    cache (the rest were compiled), in ``seconds`` of tracing, lowering and
    compiling.
    """

    programs: int = 0
    cache_hits: int = 0
    seconds: float = 0.0

    @property
    def count(self) -> int:
        """Programs obtained (compiled or loaded from the cache)."""
        return self.programs

    @property
    def compiled(self) -> int:
        """Programs the compiler built (not found in the cache)."""
        return self.programs - self.cache_hits


@contextlib.contextmanager
def compilations():
    """Count the programs (and seconds) the enclosed block compiled."""
    before = totals()
    log = CompileLog()
    try:
        yield log
    finally:
        after = totals()
        log.programs = after["programs"] - before["programs"]
        log.cache_hits = after["cache_hits"] - before["cache_hits"]
        log.seconds = after["seconds"] - before["seconds"]


# -- the kernel's limit on memory maps --------------------------------------------------------

# XLA:CPU maps every program it compiles or loads into memory regions of its own (about ten for a
# small program) and keeps them while JAX's caches hold the executable.  Past the kernel's limit on a
# process's regions (vm.max_map_count, 65,530 by default on Linux) the next program fails inside LLVM's JIT
# linker: a segfault, or "Failed to materialize symbols".  A process that compiles thousands of programs
# (a long notebook session of many shapes, a test worker) reaches it; jmf frees the compiled programs first.
MAP_HEADROOM = 0.5  # free the programs when the regions pass this fraction of the limit
_CHECK_EVERY = 64  # programs obtained between two looks at the regions (a few thousand regions at most)
_last_check = [0]


def memory_maps() -> Optional[tuple]:
    """``(regions, limit)``: memory regions this process maps and the kernel's limit, or None (not Linux)."""
    try:
        with open("/proc/sys/vm/max_map_count") as fh:
            limit = int(fh.read())
        with open("/proc/self/maps", "rb") as fh:
            regions = sum(chunk.count(b"\n") for chunk in iter(lambda: fh.read(1 << 20), b""))
    except (OSError, ValueError):
        return None
    return regions, limit


def release_programs_near_map_limit(headroom: float = MAP_HEADROOM, force_check: bool = False) -> bool:
    """Free every compiled program JAX holds (``jax.clear_caches``) when the process's memory regions pass
    ``headroom`` of the kernel's limit; returns whether it did.

    Looks at ``/proc/self/maps`` only after every ``_CHECK_EVERY`` programs obtained (or ``force_check``).
    Programs are compiled again, or loaded from the persistent cache, when next called.
    """
    if not force_check:
        programs = totals()["programs"]
        if programs - _last_check[0] < _CHECK_EVERY:
            return False
        _last_check[0] = programs
    maps = memory_maps()
    if maps is None or maps[0] < headroom * maps[1]:
        return False
    import gc

    _programs.clear()
    jax.clear_caches()
    gc.collect()
    return True
