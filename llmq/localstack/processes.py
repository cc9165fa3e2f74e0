"""Run the whole stack on one machine: API and worker processes (and Flower) as children.

Used by `llmq up`, `llmq demo` and the end-to-end tests, so all three start things one way.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx


@dataclass
class Child:
    name: str
    proc: subprocess.Popen[bytes]
    log_path: Path

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


@dataclass
class Stack:
    env: dict[str, str]
    log_dir: Path
    children: list[Child] = field(default_factory=list)

    def _spawn(self, name: str, args: list[str]) -> Child:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.log_dir / f"{name}.log"
        log = open(log_path, "ab")  # noqa: SIM115 (the child owns it)
        proc = subprocess.Popen(
            [sys.executable, "-m", "llmq.cli", *args],
            env={**os.environ, **self.env},
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # Ctrl-C reaches us; we stop children in order
        )
        child = Child(name, proc, log_path)
        self.children.append(child)
        return child

    def start_api(self, host: str, port: int) -> Child:
        child = self._spawn("api", ["api", "--host", host, "--port", str(port)])
        wait_http(f"http://{host}:{port}/healthz", child, timeout=60)
        return child

    def start_worker(
        self, name: str, *, queues: str, concurrency: int, pool: str, metrics_port: int = -1
    ) -> Child:
        return self._spawn(
            name,
            [
                "worker",
                "--name",
                name,
                "--queues",
                queues,
                "--concurrency",
                str(concurrency),
                "--pool",
                pool,
                "--metrics-port",
                str(metrics_port),
            ],
        )

    def start_flower(self, port: int) -> Child:
        return self._spawn("flower", ["flower", "--port", str(port)])

    def check_alive(self) -> None:
        for child in self.children:
            if child.proc.poll() is not None:
                raise RuntimeError(
                    f"{child.name} exited with code {child.proc.returncode}:\n{child.tail()}"
                )

    def stop(self, timeout: float = 40.0) -> None:
        """SIGTERM everyone (workers finish or requeue in-flight jobs), then SIGKILL laggards."""
        for child in self.children:
            if child.proc.poll() is None:
                child.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for child in self.children:
            try:
                child.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.proc.kill()
                child.proc.wait(timeout=10)
        self.children.clear()


def wait_http(url: str, child: Child | None = None, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if child is not None and child.proc.poll() is not None:
            raise RuntimeError(f"{child.name} exited while starting:\n{child.tail()}")
        try:
            if httpx.get(url, timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)  # the server is still binding its port; polling is the only signal
    raise TimeoutError(f"{url} did not answer within {timeout:.0f} s")
