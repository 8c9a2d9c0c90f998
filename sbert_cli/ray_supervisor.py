"""--engine ray's driver in a child process of the command: Ray ends a driver at once, from its C++ core, when the
node it is attached to dies (a head killed mid-run), and no Python code runs after that; the command outlives it,
cleans up and says in one line what is published and how to go on."""

from __future__ import annotations

import multiprocessing
import os
import signal
from typing import TYPE_CHECKING, Any

from sbert_cli import errors
from sbert_cli.errors import ClusterError, SbertError

if TYPE_CHECKING:
    from multiprocessing.connection import Connection

    from sbert_cli.job import EncodeJob
    from sbert_cli.ray_engine import RayPlan, RayResult


def clean_after_driver(job: EncodeJob) -> None:
    from sbert_cli.ray_engine import clean_after_driver as clean

    clean(job)


def run_supervised(job: EncodeJob, plan: RayPlan, notice: Any, verbose: bool) -> RayResult:
    """run_ray_job in a spawned child (Ray is imported there only); its notices, result or error come back by a
    pipe. A child that ends without either was ended by Ray: the line then says what the manifest holds."""
    context = multiprocessing.get_context("spawn")
    receive, send = context.Pipe(duplex=False)
    child = context.Process(target=_drive, args=(job, plan, verbose, send, os.getpid()), name="sbert-ray-driver")
    child.start()
    send.close()
    stopped: list[int] = []

    def stop(signum: int, frame: Any) -> None:  # a cron timeout's SIGTERM: the driver goes too
        stopped.append(signum)
        os.kill(child.pid, signum)

    forward = {signal.SIGTERM: signal.signal(signal.SIGTERM, stop)} if _main_thread() else {}
    try:
        while True:
            try:
                kind, *payload = receive.recv()
            except EOFError:
                break
            if kind == "notice":
                notice(payload[0])
            elif kind == "result":
                child.join()
                return payload[0]  # type: ignore[no-any-return]
            elif kind == "error":
                child.join()
                raise _rebuilt(*payload)
        child.join()
        if stopped:
            clean_after_driver(job)
            raise errors.Interrupted(f"stopped by SIGTERM; {_published(job)}", 128 + stopped[0])
        raise _ended_by_ray(job, child.exitcode)
    except KeyboardInterrupt:
        child.join()  # Ctrl-C reached the child too: it stops, and its own line is the one that counts
        raise
    finally:
        for number, handler in forward.items():
            signal.signal(number, handler)
        receive.close()


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def _drive(job: EncodeJob, plan: RayPlan, verbose: bool, send: Connection, command_pid: int) -> None:
    from sbert_cli.ray_engine import run_ray_job

    _end_with_the_command(command_pid)
    try:
        result = run_ray_job(job, plan, lambda message: send.send(("notice", message)), verbose)
    except SbertError as error:
        send.send(("error", type(error).__name__, str(error), error.exit_code))
        return
    except KeyboardInterrupt:
        send.send(("error", "Interrupted", "stopped by SIGINT", 130))
        return
    send.send(("result", result))


def _end_with_the_command(command_pid: int) -> None:
    """The driver dies with the command: a command killed outright (kill -9, a cron timeout's SIGKILL, the OOM killer)
    must not leave its driver publishing rounds and holding the output's lock unseen, where the user's next --resume
    would find the output busy. Linux ends it at once (the parent-death signal); elsewhere a thread watches."""
    import sys
    import threading
    import time

    if sys.platform.startswith("linux"):
        import ctypes

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != command_pid:  # gone before the signal was set
        os._exit(1)

    def watch() -> None:
        while os.getppid() == command_pid:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, name="sbert-command-watch", daemon=True).start()


def _rebuilt(kind: str, message: str, exit_code: int) -> SbertError:
    error_type = getattr(errors, kind, SbertError)
    error = error_type(message, exit_code) if error_type is errors.Interrupted else error_type(message)
    error.exit_code = exit_code
    return error  # type: ignore[no-any-return]


def _how_far(job: EncodeJob) -> str:
    """How far the run got, from the output's manifest."""
    from sbert_cli.io.manifest import load_manifest
    from sbert_cli.io.paths import DirectoryLayout
    from sbert_cli.ray_rounds import how_far

    layout = DirectoryLayout.at(job.output.path)
    return how_far(job, layout, load_manifest(layout.manifest))


def _published(job: EncodeJob) -> str:
    return _how_far(job).replace(" once the cluster is back", "")


def _ended_by_ray(job: EncodeJob, exit_code: int | None) -> ClusterError:
    """What is published, from the manifest, once a killed driver's leftovers are removed."""
    assert job.ray is not None
    clean_after_driver(job)
    where = f"the Ray cluster at {job.ray.address}" if job.ray.address else "the local Ray"
    # Ray ends a driver so only when the node it is attached to, or the cluster, is gone.
    return ClusterError(f"{where} stopped answering mid-run; {_how_far(job)}")
