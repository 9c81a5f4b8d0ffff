"""Where sweep points run: local worker processes (the default) or a Ray cluster. Both yield
(index, outcome) as each task finishes, so the caller can save every point at once and an
interrupted sweep loses nothing already done; a task whose worker dies yields an error outcome."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from typing import Any

from simkv.errors import SimkvError

EXECUTORS = ("local", "ray")


def run_tasks(fn: Callable[[Any], Any], items: list, executor: str = "local", workers: int = 0,
              address: str | None = None) -> Iterator[tuple[int, Any, str | None]]:
    """(index, fn(item) or None, error or None) for every item, in finishing order."""
    if executor == "local":
        yield from _local(fn, items, workers)
    elif executor == "ray":
        yield from _ray(fn, items, workers, address)
    else:
        raise SimkvError(f"unknown executor {executor!r}", field="--executor", fix=f"one of {', '.join(EXECUTORS)}")


def _local(fn, items, workers):
    if workers == 1 or len(items) <= 1:
        for i, item in enumerate(items):
            yield i, fn(item), None
        return
    with ProcessPoolExecutor(max_workers=workers or None) as pool:
        futures = {pool.submit(fn, item): i for i, item in enumerate(items)}
        for fut in as_completed(futures):
            try:
                yield futures[fut], fut.result(), None
            except Exception as err:  # the worker process died (killed, out of memory)
                yield futures[fut], None, f"worker died: {type(err).__name__}: {err}"


# Ray rewrites a node address of 127.0.0.1 to this machine's network address, and its servers listen on
# the node address, unless multi-node clusters are off; it reads this switch once, when it is imported
LOOPBACK_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def _ray(fn, items, workers, address):
    if not address:
        os.environ.setdefault(LOOPBACK_ENV, "0")   # a private Ray: single machine, loopback only
    try:
        import ray
    except ImportError:
        raise SimkvError("the Ray executor needs Ray installed", field="--executor",
                         fix="pip install 'simkv[ray]' (on every node of the cluster), or use --executor local") from None
    started = not ray.is_initialized()
    if started:
        if address and address != "auto" and not address.startswith("ray://"):
            _check_reachable(address)
        try:
            ray.init(**ray_init_kwargs(address, workers))
        except (ConnectionError, RuntimeError, ValueError) as err:
            raise SimkvError(f"cannot reach Ray at {address!r}: {err}", field="--address",
                             fix="start the cluster with `ray start --head` and pass the address it prints (host:port)") from None
    try:
        remote = ray.remote(num_cpus=1, max_retries=0)(fn)
        pending = {remote.remote(item): i for i, item in enumerate(items)}
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                i = pending.pop(ref)
                try:
                    yield i, ray.get(ref), None
                except ray.exceptions.RayError as err:
                    yield i, None, f"Ray task failed: {type(err).__name__}: {str(err).splitlines()[0]}"
    finally:
        if started:
            ray.shutdown()


def ray_init_kwargs(address: str | None, workers: int = 0) -> dict:
    """Arguments of `ray.init`: no dashboard, no log forwarding; without an address a new private Ray
    is started on this machine ("local": not a cluster found through RAY_ADDRESS or `ray start`), bound
    to the loopback interface (127.0.0.1) so no other host can reach it (with LOOPBACK_ENV, see _ray)."""
    kwargs = {"address": address or "local", "include_dashboard": False, "log_to_driver": False,
              "configure_logging": False}
    if not address:
        kwargs["_node_ip_address"] = "127.0.0.1"
        if workers:
            kwargs["num_cpus"] = workers
    return kwargs


def _check_reachable(address: str, timeout_s: float = 5.0) -> None:
    """Fail fast with a clear message: ray.init retries an unreachable head for minutes."""
    import socket
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise SimkvError(f"cannot read Ray address {address!r}", field="--address", fix="give host:port, e.g. 10.0.0.5:6379")
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except OSError as err:
        raise SimkvError(f"cannot reach Ray at {address}: {err.strerror or err}", field="--address",
                         fix="start the cluster with `ray start --head` and pass the address it prints (host:port)") from None
