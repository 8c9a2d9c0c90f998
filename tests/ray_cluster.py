"""A real multi-node Ray cluster on 127.0.0.1 for the tests, owned by a child process of its own.

`python -m tests.ray_cluster NODES GPUS HEAD_CPUS NODE_ENV` starts a head and NODES-1 worker nodes
(ray.cluster_utils.Cluster, one CPU each unless HEAD_CPUS says otherwise; NODE_ENV, JSON, is the worker nodes'
raylets' environment), prints the head's address, then obeys lines on stdin: `kill-head` and `kill-node` (the last
worker node, killed without warning, as a lost machine), `quit` (or end of input) to shut everything down. Owning the cluster in a
child keeps the test process free of its state, and everything the cluster started is that child's to stop.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Ray binds and dials 127.0.0.1, not the interface address; and a token some earlier run left in ~/.ray/auth_token
# does not switch token authentication on for one Ray and not another (the test that wants it sets it).
LOOPBACK_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "disabled"}


class RayCluster:
    """The child process and its cluster: `address`, `kill_head()`, `kill_node()`, `close()`."""

    def __init__(
        self, nodes: int, env: dict[str, str] | None = None, num_gpus: int = 0, head_cpus: int = 1, node_env: dict[str, str] | None = None,
        hidden: Path | None = None,
    ) -> None:
        """`env` for every node, `node_env` for the worker nodes' raylets only (what their workers see); `hidden`, a
        folder every node sees empty (the cluster runs in a mount namespace of its own, as if on other machines)."""
        environment = {**os.environ, **LOOPBACK_ENV, **(env or {})}
        command = [sys.executable, "-m", "tests.ray_cluster", str(nodes), str(num_gpus), str(head_cpus), json.dumps(node_env or {})]
        if hidden is not None:
            command = ["unshare", "--user", "--map-current-user", "--mount", "sh", "-c", 'mount -t tmpfs sbert-hidden "$0" && exec "$@"', str(hidden), *command]
        self.process = subprocess.Popen(
            command, cwd=ROOT, env=environment,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline().strip()
        if not line.startswith("address "):
            self.close()
            raise RuntimeError(f"the test cluster did not start: {line!r}")
        self.address = line.split()[1]

    def _tell(self, command: str) -> None:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(command + "\n")
        self.process.stdin.flush()
        assert self.process.stdout.readline().strip() == "done"

    def kill_head(self) -> None:
        self._tell("kill-head")

    def kill_node(self) -> None:
        self._tell("kill-node")

    def close(self) -> None:
        if self.process.poll() is None:
            try:
                assert self.process.stdin is not None
                self.process.stdin.write("quit\n")
                self.process.stdin.close()
            except (BrokenPipeError, OSError):
                pass
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()  # our own child only; its nodes die with it (Ray sets their parent-death signal)
                self.process.wait()


def main() -> None:
    for name, value in LOOPBACK_ENV.items():
        os.environ.setdefault(name, value)  # a test's own settings (token authentication) win
    from ray.cluster_utils import Cluster

    nodes, gpus, head_cpus, node_env = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), json.loads(sys.argv[4])
    resources = {"num_cpus": 1, **({"num_gpus": gpus} if gpus else {})}
    cluster = Cluster(initialize_head=True, head_node_args={**resources, "num_cpus": head_cpus, "include_dashboard": False})
    workers = [cluster.add_node(**resources, **({"env_vars": node_env} if node_env else {})) for _ in range(nodes - 1)]
    cluster.wait_for_nodes()
    print("address", cluster.address, flush=True)
    try:
        for line in sys.stdin:
            command = line.strip()
            if command == "kill-head":
                cluster.remove_node(cluster.head_node, allow_graceful=False)
            elif command == "kill-node":
                cluster.remove_node(workers.pop(), allow_graceful=False)
            elif command == "quit":
                break
            print("done", flush=True)
    finally:
        started = time.monotonic()
        cluster.shutdown()
        print(f"shut down in {time.monotonic() - started:.1f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
