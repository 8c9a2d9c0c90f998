"""The Ray an --engine ray run works on: a local one of its own or a cluster joined, each way that fails as one line,
Ray's own log lines kept off stderr (unless -v), and a watch on the cluster's head while the run goes on."""

from __future__ import annotations

import io
import logging
import os
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from sbert_cli.errors import EXIT_CLUSTER, ClusterError, UsageError, first_line
from sbert_cli.words import plural

CONNECT_SECONDS = 20.0  # an address where nothing answers for this long fails, within the ~30 s users wait
LOST_SECONDS = 8.0  # a head that stops answering for this long mid-run ends the run (Ray itself waits 60 s, then kills it)
GRACE_SECONDS = 5.0  # for the main thread to stop on its own after that
_RAY_FIX = "start it (ray start --head) or pass the address `ray start` printed"


@dataclass
class HeadWatch:
    """Polls the head's port from a thread; when it stops answering the run's main thread is interrupted."""

    address: str | None
    lost: bool = False
    _stop: threading.Event = field(default_factory=threading.Event)

    def start(self) -> None:
        if self.address is not None:
            threading.Thread(target=self._watch, name="sbert-ray-head-watch", daemon=True).start()

    def stop(self) -> None:
        self._stop.set()

    def _watch(self) -> None:
        import _thread

        assert self.address is not None
        silent_since: float | None = None
        while not self._stop.wait(1.0):
            if _answers(self.address, timeout=1.0):
                silent_since = None
                continue
            silent_since = silent_since or time.monotonic()
            if time.monotonic() - silent_since >= LOST_SECONDS:
                self.lost = True
                _thread.interrupt_main()  # where the main thread waits in Ray's Python loops, it raises KeyboardInterrupt
                if not self._stop.wait(GRACE_SECONDS):
                    # It waits in Ray's C++ instead, where no signal reaches it: this process (the driver, a child of
                    # the command, ray_supervisor) ends, and the command says what the manifest holds.
                    os._exit(EXIT_CLUSTER)
                return


def _host_port(address: str) -> tuple[str, int] | None:
    """host:port of an address (ray://host:port included); None when it names no port."""
    rest = address.split("://", 1)[-1].rstrip("/")
    host, _, port = rest.rpartition(":")
    if not host or not port.isdigit():
        return None
    return host.strip("[]"), int(port)


def _answers(address: str, timeout: float) -> bool:
    where = _host_port(address)
    if where is None:
        return True  # nothing to probe; Ray says what it finds
    try:
        with socket.create_connection(where, timeout=timeout):
            return True
    except OSError:
        return False


@contextmanager
def quiet_ray(verbose: bool) -> Iterator[None]:
    """Ray's own log lines kept off the user's stderr (-v shows them): its Python loggers are silenced, and its C++
    core, which writes to file descriptor 2 (a refused token's retries, a lost head's reconnects), writes to
    /dev/null while Ray runs; sbert's own lines still reach stderr through sys.stderr."""
    _quiet_loggers(verbose)
    if verbose:
        yield
        return
    try:
        sys.stderr.flush()
        real = sys.stderr.fileno() == 2
    except (AttributeError, OSError, ValueError):
        real = False  # sys.stderr is not the descriptor (a test runner's capture): only the descriptor is redirected
    saved = os.dup(2)
    nowhere = os.open(os.devnull, os.O_WRONLY)
    os.dup2(nowhere, 2)
    os.close(nowhere)
    shown = sys.stderr
    if real:
        sys.stderr = io.TextIOWrapper(io.FileIO(os.dup(saved), "w"), encoding=shown.encoding, errors="backslashreplace", line_buffering=True)
    try:
        yield
    finally:
        if real:
            sys.stderr.flush()
            sys.stderr.close()
            sys.stderr = shown
        os.dup2(saved, 2)
        os.close(saved)


def _quiet_loggers(verbose: bool) -> None:
    import warnings

    import ray.data  # noqa: F401  (Ray Data sets up its loggers when imported: after that, or it undoes this)

    if not verbose:
        warnings.filterwarnings("ignore", module=r"ray\.")  # tuning advice about Ray's own pools

    for name in ("ray", "ray.data", "ray.train", "ray.tune"):
        logging.getLogger(name).setLevel(logging.INFO if verbose else logging.CRITICAL)


def running_cluster() -> str | None:
    """The address of a cluster `ray start` left running on this machine (Ray's own record), if it answers."""
    try:
        from ray._private.services import find_bootstrap_address

        address = find_bootstrap_address(None)
    except Exception:  # a private API: when it moves, no notice is given, and the run goes on
        return None
    return address if address and _answers(address, timeout=1.0) else None


def resolve_address(address: str) -> str:
    """--ray-address as Ray takes it: 'auto' is the cluster `ray start` left on this machine; it must answer."""
    if address == "auto":
        found = running_cluster()
        if found is None:
            raise ClusterError(f"--ray-address auto: no Ray cluster is running on this machine; {_RAY_FIX}")
        address = found
    if _host_port(address) is None:
        raise UsageError(f"--ray-address {address}: names no port; pass HOST:PORT (the head's GCS port, 6379 by default) or auto")
    deadline = time.monotonic() + CONNECT_SECONDS
    while not _answers(address, timeout=2.0):
        if time.monotonic() >= deadline:
            raise ClusterError(f"--ray-address {address}: nothing answers there after {CONNECT_SECONDS:.0f} s; {_RAY_FIX}")
        time.sleep(1.0)
    _check_token(address)
    return address


def _check_token(address: str) -> None:
    """One request to the head: a refused token fails here at once, where ray.init would retry it for 20 s and then
    say only that it cannot connect."""
    try:
        from ray._raylet import GcsClient
        from ray.exceptions import AuthenticationError
    except ImportError:  # a private API: without it, ray.init's own error is reported
        return
    try:
        GcsClient(address=address.split("://", 1)[-1])
    except AuthenticationError as error:
        raise connect_error(address, error) from None
    except Exception:
        return  # anything else, ray.init meets and reports


@contextmanager
def ray_session(address: str | None, cores: int, verbose: bool, notice: Callable[[str], None]) -> Iterator[HeadWatch]:
    """Ray started or joined for one run, and shut down after it; a Ray the caller started is used as it is."""
    import ray

    if ray.is_initialized():
        _quiet_loggers(verbose)
        yield HeadWatch(None)
        return
    with quiet_ray(verbose), _joined(address, cores, verbose, notice) as watch:
        yield watch


@contextmanager
def _joined(address: str | None, cores: int, verbose: bool, notice: Callable[[str], None]) -> Iterator[HeadWatch]:
    import ray

    if address is None:
        running = running_cluster()
        if running is not None:
            notice(f"sbert: a Ray cluster is running at {running}; this run starts a local Ray of its own (pass --ray-address {running} to run on that one)")
        target: dict[str, object] = {"address": "local", "num_cpus": cores}
    else:
        address = resolve_address(address)
        target = {"address": address}
    try:
        ray.init(include_dashboard=False, log_to_driver=verbose, logging_level=logging.INFO if verbose else logging.ERROR, **target)
    except Exception as error:
        raise connect_error(address, error) from None
    watch = HeadWatch(address)
    watch.start()
    try:
        yield watch
    finally:
        watch.stop()
        if not watch.lost:  # a lost head would make shutdown wait for it
            ray.shutdown()


def check_room(address: str, workers: int, cpus_per_worker: float, gpus_per_worker: float) -> None:
    """A named cluster too small for the actor pool plus a reading task: Ray Data would wait for room forever, so the
    run stops in one line with what fits. Actors are placed node by node, as Ray must (an actor is never split)."""
    import ray

    nodes = [node["Resources"] for node in ray.nodes() if node.get("Alive")]
    free_cpus, placed = [], 0
    for resources in nodes:
        cpus, gpus = float(resources.get("CPU", 0)), float(resources.get("GPU", 0))
        fit = min(
            int(cpus // cpus_per_worker) if cpus_per_worker > 0 else workers,
            int(gpus // gpus_per_worker) if gpus_per_worker > 0 else workers,
            workers - placed,
        )
        placed += fit
        free_cpus.append(cpus - fit * cpus_per_worker)
    if placed >= workers and max(free_cpus, default=0) >= 1:
        return
    reading = max(free_cpus, default=0) >= 1
    fitting = placed if reading or placed == 0 else placed - 1
    each_gpu = f" x --gpus-per-worker {gpus_per_worker:g}" if gpus_per_worker else ""
    total = sum(float(resources.get("CPU", 0)) for resources in nodes)
    raise ClusterError(
        f"the Ray cluster at {address} has room for {plural(fitting, 'worker')} of --cpus-per-worker {cpus_per_worker:g}{each_gpu} "
        f"beside a CPU for reading ({total:g} CPUs on {plural(len(nodes), 'node')}), not {workers}; "
        + (f"pass --workers {fitting}, or add nodes" if fitting else "add nodes, or pass a smaller --cpus-per-worker")
    )


def connect_error(address: str | None, error: BaseException) -> ClusterError:
    """Why ray.init failed, in one line with the fix."""
    where = f"the Ray cluster at {address}" if address else "a local Ray"
    text = str(error)
    if "AuthenticationError" in type(error).__name__ or "InvalidAuthToken" in text:
        return ClusterError(
            f"{where} refused this run's authentication token; set RAY_AUTH_TOKEN (or ~/.ray/auth_token) to the cluster's token "
            "(ray get-auth-token on the head)"
        )
    return ClusterError(f"{where}: cannot connect ({first_line(error)}); {_RAY_FIX}")
