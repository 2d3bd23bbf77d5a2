"""Worker processes for the data path: an ordered map with a bounded number of items in flight.

Used by the corpus ingest (parts or batches of the source) and by example building (document
shards). What every worker needs to read (a task, a phrase model, a folder) is set in ``SHARED``
before the work starts; only the items go to the workers, and only what the function returns comes
back. At most ``in_flight`` items are submitted ahead of the one being consumed, so a fast reader
never piles its whole input up in the pipes (``Pool.imap`` would).

Two engines, chosen by the caller with ``use_engine``:

- ``local`` (default): forked processes on this machine; ``SHARED`` is inherited, never pickled.
- ``ray``: the same module-level functions as Ray tasks, on a local Ray started here or on a
  cluster (``address``). ``SHARED`` is put in Ray's object store once per ``ordered_map`` and read
  once by each Ray worker process, which sets its own ``SHARED`` from it before every call. The
  functions write their files themselves, so on a cluster those folders must be on storage every
  node sees. Ray is imported only when this engine is chosen.

Results come back in item order either way, so what is built does not depend on the engine, the
number of workers or the items in flight.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import multiprocessing
import os
import socket
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from ernie_cl.errors import ConfigError

SHARED: dict[str, Any] = {}
ENGINES = ("local", "ray")
_ENGINE: dict[str, Any] = {"name": "local", "ray": None}  # the engine ordered_map uses (see use_engine)
_RAY_TASK: dict[str, Any] = {}  # the remote function, made once per Ray session
_WORKER_CACHE: dict[str, dict[str, Any]] = {}  # in a Ray worker: the shared dict of the current map, by ref
_WORKERS = {"count": 1}  # workers of the preparation in progress (see use_workers)


@contextlib.contextmanager
def use_engine(name: str = "local", address: str | None = None, num_cpus: int | None = None) -> Iterator[None]:
    """Run every ``ordered_map`` inside the block on engine ``name`` (``local`` or ``ray``).

    ``ray``: joins the cluster at ``address`` (``host:port``, ``ray://host:port`` or ``auto``), or
    without one starts Ray on this machine with ``num_cpus`` CPUs, unless Ray is initialised
    already. Ray stays up for the whole block (starting it takes seconds) and is shut down at its
    end only if it was started here. A missing Ray or an unreachable address is a one-line
    ``ConfigError``. The previous engine is restored on exit."""
    if name not in ENGINES:
        raise ConfigError(f"unknown data engine '{name}'; use one of {', '.join(ENGINES)}")
    if address and name != "ray":
        raise ConfigError("--ray-address needs --engine ray (the local engine runs on this machine only)")
    previous = dict(_ENGINE)
    ray, started = None, False
    if name == "ray":
        ray, started = _start_ray(address, num_cpus)
    _ENGINE.update(name=name, ray=ray)
    try:
        yield
    finally:
        _ENGINE.clear()
        _ENGINE.update(previous)
        if started:
            _RAY_TASK.clear()
            ray.shutdown()


@contextlib.contextmanager
def use_workers(count: int) -> Iterator[None]:
    """Inside the block, ``current_workers()`` is ``count``: how many workers a stage that makes its
    own ``ordered_map`` (a task's ``fit``) may use. Outside any preparation it is 1."""
    previous = _WORKERS["count"]
    _WORKERS["count"] = max(1, int(count))
    try:
        yield
    finally:
        _WORKERS["count"] = previous


# The data path makes millions of small short-lived objects (token lists, words, sentences) that
# reference counting frees; the cyclic collector only adds cost. With torch and transformers
# imported, each of its full passes also walks their hundreds of thousands of long-lived objects:
# measured, decoding documents took 3 to 5 times longer with the default collector. So during a
# preparation what exists is frozen (out of collection; in a forked worker it also keeps those pages
# shared) and the young generation is collected 140 times less often (100,000 allocations, not 700).
PREPARE_GC_THRESHOLDS = (100_000, 50, 100)


@contextlib.contextmanager
def lean_collection() -> Iterator[None]:
    """Inside the block: the cyclic garbage collector tuned for the data path (see above)."""
    previous = gc.get_threshold()
    gc.freeze()
    gc.set_threshold(*PREPARE_GC_THRESHOLDS)
    try:
        yield
    finally:
        gc.set_threshold(*previous)
        gc.unfreeze()


def current_workers() -> int:
    return _WORKERS["count"]


def engine_name() -> str:
    return _ENGINE["name"]


def engine_cpus() -> int:
    """CPUs the current engine offers: the Ray cluster's, or this machine's."""
    if _ENGINE["name"] == "ray":
        return max(1, int(_ENGINE["ray"].cluster_resources().get("CPU", 1)))
    return os.cpu_count() or 1


def ordered_map(function: Callable[[Any], Any], items: Iterable[Any], workers: int,
                in_flight: int | None = None, **shared: Any) -> Iterator[Any]:
    """``function(item)`` for every item, in the items' order, in ``workers`` forked processes or
    Ray tasks at a time (see ``use_engine``); in this process for 1, or where fork is unavailable
    to the local engine. ``shared`` is what the workers read through ``SHARED``. A worker that
    dies is ``BrokenProcessPool`` here, never a hang; an exception in a Ray task comes back as
    the original exception where Ray could carry it."""
    SHARED.update(shared)
    try:
        ray = _ENGINE["ray"] if _ENGINE["name"] == "ray" else None
        if workers <= 1 or (ray is None and "fork" not in multiprocessing.get_all_start_methods()):
            for item in items:
                yield function(item)
            return
        limit = in_flight or 2 * workers
        if ray is not None:
            yield from _ray_map(ray, function, items, limit, shared)
            return
        os.environ["TOKENIZERS_PARALLELISM"] = "false"  # the Rust pool must not be used across a fork
        if gc.isenabled() and gc.get_freeze_count():  # inside lean_collection: what the parent built so
            gc.freeze()  # far stays out of the workers' collections and their pages stay shared
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")) as pool:
            pending: deque = deque()
            for item in items:
                pending.append(pool.submit(function, item))
                if len(pending) >= limit:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
    finally:
        SHARED.clear()


RANGE_CHARS = 4_000_000  # text a worker reads for one call of map_ranges


def map_ranges(function: Callable[[Any], Any], documents: Any, workers: int | None = None) -> Iterator[Any]:
    """``function(documents[a:b])`` for consecutive ranges of documents that cover them all, in
    order, on ``workers`` (default ``current_workers()``): a task's ``fit`` reads the split in
    parallel this way and reduces the results in the parent. Ranges hold about ``RANGE_CHARS``
    characters of text (at least 4 per worker), a function of the documents alone. ``function``
    must be picklable: a module-level function, or a ``functools.partial`` of one."""
    workers = workers or current_workers()
    n = len(documents)
    if hasattr(documents, "char_counts"):
        chars = documents.char_counts()
        pieces = max(4 * workers, -(-int(chars.sum()) // RANGE_CHARS)) if n else 0
    else:
        pieces = 4 * workers if n else 0
    pieces = min(pieces, n)
    bounds = [(n * i // pieces, n * (i + 1) // pieces) for i in range(pieces)]
    yield from ordered_map(_range_call, bounds, workers, range_function=function, range_documents=documents)


def _range_call(bounds: tuple[int, int]) -> Any:
    start, end = bounds
    return SHARED["range_function"](SHARED["range_documents"][start:end])


# --- the Ray engine ---------------------------------------------------------------------------------

def _start_ray(address: str | None, num_cpus: int | None) -> tuple[Any, bool]:
    """(the ray module, whether Ray was started here)."""
    try:
        import ray
    except ImportError:
        raise ConfigError("--engine ray needs Ray, which is not installed; install it (pip install 'ray>=2.9') "
                          "or use --engine local") from None
    if ray.is_initialized():
        return ray, False
    env = {"TOKENIZERS_PARALLELISM": "false"}
    env.update({k: v for k, v in os.environ.items() if k.startswith("ERNIE_CL_")})  # e.g. fault injection in tests
    options: dict[str, Any] = dict(include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING,
                                   runtime_env={"env_vars": env})
    # Token authentication is Ray's default (a local token is made, or found, in ~/.ray); Ray warns
    # that it is on, which is no news to a user of this command (a warning that it is off still shows).
    auth_log = logging.getLogger("ray._private.authentication.authentication_token_setup")
    auth_log.addFilter(_auth_enabled_notice)
    try:
        if address:
            _join_ray(ray, address, options)
        else:
            try:
                ray.init(num_cpus=num_cpus, **options)
            except Exception as exc:  # noqa: BLE001
                lines = str(exc).strip().splitlines()
                raise ConfigError(f"cannot start Ray on this machine ({lines[0] if lines else type(exc).__name__}); "
                                  "use --engine local, or start a cluster (ray start --head) and pass "
                                  "--ray-address") from None
    finally:
        auth_log.removeFilter(_auth_enabled_notice)
    return ray, True


def _auth_enabled_notice(record: logging.LogRecord) -> bool:
    return not record.getMessage().startswith("Token authentication is enabled")


def _join_ray(ray: Any, address: str, options: dict[str, Any]) -> None:
    _check_reachable(address)
    if address.startswith("ray://"):  # Ray Client takes fewer options (untested here: no client server)
        options = {"runtime_env": options["runtime_env"]}
    try:
        with _stderr_kept_back() as kept:  # Ray's core logs every failed retry to stderr
            ray.init(address=address, **options)
    except Exception as exc:  # noqa: BLE001 - Ray raises ConnectionError, RuntimeError, ... here
        lines = str(exc).strip().splitlines()
        raise ConfigError(f"cannot join the Ray cluster at --ray-address {address} "
                          f"({lines[0] if lines else type(exc).__name__}); check the address "
                          "(`ray status` on the head node prints it) or leave --ray-address out to start Ray "
                          "on this machine") from None
    if kept and kept[0]:
        os.write(2, kept[0])  # joined: whatever Ray had to say is shown after all


@contextlib.contextmanager
def _stderr_kept_back() -> Iterator[list[bytes]]:
    """File descriptor 2 (where Ray's C++ core writes) goes to a temporary file inside the block;
    what was written there is in the yielded list afterwards."""
    import sys
    import tempfile

    kept: list[bytes] = []
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as sink:
        try:
            os.dup2(sink.fileno(), 2)
            yield kept
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            kept.append(sink.read())


def _check_reachable(address: str, timeout: float = 3.0) -> None:
    """Fail at once on an address nothing listens on (Ray would retry for a long time)."""
    if address == "auto":
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"--ray-address '{address}' is not HOST:PORT (e.g. 10.0.0.1:6379, ray://10.0.0.1:10001 or auto)")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise ConfigError(f"cannot reach the Ray cluster at --ray-address {address} ({reason}); start its head "
                          "node (ray start --head) and pass the address it prints, or leave --ray-address out "
                          "to start Ray on this machine") from None


def _ray_map(ray: Any, function: Callable[[Any], Any], items: Iterable[Any], limit: int,
             shared: dict[str, Any]) -> Iterator[Any]:
    if "remote" not in _RAY_TASK:
        # max_retries=0: a worker that dies is reported (as a forked one is), not run again unseen
        _RAY_TASK["remote"] = ray.remote(num_cpus=1, max_retries=0)(_ray_task)
    remote = _RAY_TASK["remote"]
    shared_ref = [ray.put(dict(shared))]  # in a list: Ray passes the ref as it is, not its value
    pending: deque = deque()
    try:
        for item in items:
            pending.append(remote.remote(function, shared_ref, item))
            if len(pending) >= limit:
                yield _ray_result(ray, pending.popleft())
        while pending:
            yield _ray_result(ray, pending.popleft())
    finally:
        for ref in pending:  # an error or a stop: what has not run yet need not run
            with contextlib.suppress(Exception):
                ray.cancel(ref)


def _ray_task(function: Callable[[Any], Any], shared_ref: list[Any], item: Any) -> Any:
    """In a Ray worker process: ``SHARED`` from the map's shared dict (read once per map), then the
    stage function, unchanged."""
    import ray

    if gc.get_threshold() != PREPARE_GC_THRESHOLDS:  # a Ray worker process: tuned once, as in lean_collection
        gc.freeze()
        gc.set_threshold(*PREPARE_GC_THRESHOLDS)
    key = shared_ref[0].hex()
    if key not in _WORKER_CACHE:
        _WORKER_CACHE.clear()  # one map at a time: the previous map's objects can go
        _WORKER_CACHE[key] = ray.get(shared_ref[0])
    SHARED.clear()
    SHARED.update(_WORKER_CACHE[key])
    return function(item)


def _ray_result(ray: Any, ref: Any) -> Any:
    """The task's result; its exception as the original type where possible; a dead worker (or
    node) as ``BrokenProcessPool``, like a forked worker that dies."""
    errors = ray.exceptions
    died = tuple(getattr(errors, n) for n in ("WorkerCrashedError", "OutOfMemoryError", "NodeDiedError",
                                              "LocalRayletDiedError", "ObjectLostError") if hasattr(errors, n))
    try:
        return ray.get(ref)
    except errors.RayTaskError as exc:
        cause = getattr(exc, "cause", None)
        if isinstance(cause, Exception) and not isinstance(cause, errors.RayError):
            raise cause from exc  # the remote traceback stays readable in exc (shown with --debug)
        raise
    except died as exc:
        lines = str(exc).strip().splitlines()
        raise BrokenProcessPool(f"a Ray worker died ({type(exc).__name__}: {lines[0] if lines else ''})") from exc
