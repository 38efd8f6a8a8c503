"""Scale-out: several livecap nodes and one real Redis on loopback (README.md, Scale-out).

``python -m benchmarks.cluster hop``: a publisher on node A, viewers on B and C: every caption
arrives with the seqs and finals of a single node; the extra delay of the hop through Redis.
``python -m benchmarks.cluster failover``: ``kill -9`` of the owning node mid-stream, N times; the
publisher reconnects to another node; what viewers on the surviving nodes lost (nothing, asked),
the gap in captions and the audio lost.
``python -m benchmarks.cluster viewers``: many viewers spread over 3 nodes: every viewer gets every
final; fan-out delay per node; server RSS per node.

Results are written as JSON to benchmarks/results/.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import redis

from benchmarks.live import free_port


class RedisServer:
    """A real ``redis-server`` (Debian's package) on a free loopback port, in a directory of its
    own. Append-only file synced at every write (``appendfsync always``): a restarted Redis has
    every event it acknowledged (README.md, Scale-out: the settings that matter)."""

    def __init__(self, directory: Path, port: int | None = None) -> None:
        self.directory = directory
        self.port = port or free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed (apt-get install redis-server; make system-deps)")
        self.process = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.directory),
             "--save", "", "--appendonly", "yes", "--appendfsync", "always", "--protected-mode", "yes"],
            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        client = redis.Redis(port=self.port)
        deadline = time.monotonic() + 10
        while True:
            try:
                if client.ping():
                    return
            except redis.ConnectionError:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    raise RuntimeError(f"redis-server did not start on port {self.port}") from None
                time.sleep(0.05)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)
        self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()


@contextlib.contextmanager
def redis_server() -> Iterator[RedisServer]:
    with tempfile.TemporaryDirectory(prefix="livecap-redis-") as directory:
        server = RedisServer(Path(directory))
        server.start()
        try:
            yield server
        finally:
            server.stop()
