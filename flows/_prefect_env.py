"""Prefect settings for a machine with no server and no network.

Must run before ``prefect`` is first imported: Prefect reads its settings
from the environment at import time. Importing this module applies them
(:func:`configure_prefect`); the modules of ``emfuse.flows`` that use Prefect
import it first, so ``import emfuse`` or ``import emfuse.flows`` changes no
environment variable, and the set-up happens at the first use of Prefect.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import platformdirs

from emfuse.errors import NotAvailableHere

LOOPBACK = "127.0.0.1"


def configure_prefect(home: str | Path | None = None) -> Path:
    """Default Prefect to ephemeral, offline operation; returns ``PREFECT_HOME``.

    Values the user set in the environment are kept (``setdefault``), so a
    facility can point emfuse at its own Prefect server with ``PREFECT_API_URL``.
    Prefect servers started from this process listen on 127.0.0.1
    (``PREFECT_SERVER_API_HOST``, ``PREFECT_RUNNER_SERVER_HOST``) unless those
    are set; the ephemeral server always does.
    """
    prefect_home = Path(
        home or os.environ.get("PREFECT_HOME") or platformdirs.user_cache_dir("emfuse") + "/prefect"
    )
    prefect_home.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("PREFECT_HOME", str(prefect_home))
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_ENABLED", "true")
    # the first ephemeral server start takes 13-20 s on a 2-core machine
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    os.environ.setdefault("PREFECT_UI_ENABLED", "false")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    # A temporary server keeps task and flow runs (their records come from the task run recorder)
    # but need not store every state-change event in its database nor match events against
    # automations: nothing reads them without a UI. Off, the server spent 18 % less CPU on a
    # night of 52 jobs and its database grew 1.1 MB instead of 5.2 MB (docs/benchmarks.md, round 7).
    os.environ.setdefault("PREFECT_SERVER_SERVICES_EVENT_PERSISTER_ENABLED", "false")
    os.environ.setdefault("PREFECT_SERVER_SERVICES_TRIGGERS_ENABLED", "false")
    # Servers listen on loopback only unless the user says otherwise. Prefect's
    # ephemeral server binds 127.0.0.1 itself; these cover a Prefect server or
    # runner webserver started from this process or its children (which inherit
    # the environment): the API host (Prefect's default is also 127.0.0.1, pinned
    # here against a changed default or profile) and the runner webserver of
    # `flow.serve(webserver=True)` (Prefect's default "localhost", pinned to IPv4
    # loopback).
    os.environ.setdefault("PREFECT_SERVER_API_HOST", LOOPBACK)
    os.environ.setdefault("PREFECT_RUNNER_SERVER_HOST", LOOPBACK)
    return prefect_home


configure_prefect()


class EarlyServer:
    """Prefect's temporary API server, started before the batch's own imports.

    A batch with no ``PREFECT_API_URL`` runs against a temporary server that Prefect's first flow
    call starts and waits for: Prefect imports its server module in this process (1.3-4 s on a
    2-core machine) and only then launches the server's process, which imports the same module
    and opens its database (3-5 s more). Here the process is launched as soon as Prefect's
    settings are read, in a thread, the same way Prefect launches it (its ASGI app under uvicorn
    on loopback, in Prefect's ephemeral mode: no UI, no services); the batch's imports and checks
    run meanwhile, and :meth:`serving` points the flow at it (``PREFECT_API_URL`` for the block).
    The server stops when this process exits. Where a server is configured, or temporary servers
    are switched off, nothing is started and Prefect does as configured; where the early start
    itself fails (say, uvicorn is missing), the flow call starts Prefect's own server and reports
    any error as usual.
    """

    #: the environment of the server's process, as Prefect's own ``SubprocessASGIServer`` sets it
    #: (Prefect 3.4-3.8): its ephemeral mode, without the UI
    SERVER_ENV = {"PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1", "PREFECT__SERVER_FINAL": "1"}
    #: a uvicorn process exits with this status when its port was taken meanwhile: start again
    PORT_TAKEN, TRIES = 3, 3

    def __init__(self) -> None:
        self.process: subprocess.Popen | None = None
        self.url: str | None = None
        self._command: Callable[[int], list[str]] | None = None
        self._env: dict[str, str] = {}
        self._timeout = 120.0
        self._thread = threading.Thread(target=self._start, name="emfuse-prefect-server", daemon=True)
        self._thread.start()

    def _start(self) -> None:
        try:
            import prefect
            from prefect.settings import get_current_settings

            settings = get_current_settings()
            if settings.api.url or not settings.server.ephemeral.enabled:
                return  # a configured server (nothing to start), or none allowed (the flow says so)
            app_dir = str(prefect.__module_path__.parent)
            self._command = lambda port: [
                sys.executable, "-m", "uvicorn", "--app-dir", app_dir, "--factory",
                "prefect.server.api.server:create_app", "--host", LOOPBACK, "--port", str(port),
                "--log-level", "error", "--lifespan", "on"]
            self._env = {**os.environ, **settings.to_environment_variables(exclude_unset=True), **self.SERVER_ENV}
            self._timeout = float(settings.server.ephemeral.startup_timeout_seconds)
            atexit.register(self.stop)  # first: an exit while it launches still stops it
            self._launch()
        except Exception:  # the flow call starts Prefect's own server and raises what went wrong
            logging.getLogger(__name__).debug("early start of Prefect's server failed", exc_info=True)
            self.process = None

    def _launch(self) -> None:
        port = _free_port()
        self.process = subprocess.Popen(self._command(port), env=self._env)
        self.url = f"http://{LOOPBACK}:{port}/api"

    @contextlib.contextmanager
    def serving(self) -> Iterator[None]:
        """Wait until the early server answers, then run the block with Prefect pointed at it
        (without one: the block as it is, and Prefect does as configured)."""
        self._thread.join()
        if self.process is None:
            yield
            return
        self._wait()
        from prefect.settings import PREFECT_API_URL, temporary_settings

        with temporary_settings(updates={PREFECT_API_URL: self.url}):
            yield

    def _wait(self) -> None:
        tries, deadline = 1, time.monotonic() + self._timeout
        while time.monotonic() < deadline:
            status = self.process.poll()
            if status == self.PORT_TAKEN and tries < self.TRIES:
                tries += 1
                self._launch()
            elif status is not None:
                raise NotAvailableHere(
                    f"Prefect's temporary server exited while starting (status {status}; its messages are "
                    "above). Set PREFECT_API_URL to a running Prefect server, or fix what it reports.")
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=1) as answer:
                    if answer.status == 200:
                        return
            except OSError:  # not listening yet
                pass
            time.sleep(0.1)
        self.stop()
        raise NotAvailableHere(
            f"Prefect's temporary server did not answer within {self._timeout:g} s; raise "
            "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS on a busy machine, or set PREFECT_API_URL "
            "to a running Prefect server.")

    def stop(self) -> None:
        """Stop the server's process (at this process's exit; after its launch, if that is under way)."""
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout=self._timeout)  # bounded: an exit never hangs on it
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _free_port() -> int:
    """A loopback port nothing listens on now (the system's choice)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def start_server_early() -> EarlyServer:
    """Begin starting Prefect's temporary API server now (:class:`EarlyServer`); run the flow in
    its :meth:`~EarlyServer.serving` block.

    Examples
    --------
    >>> server = start_server_early()  # doctest: +SKIP
    >>> with server.serving():  # doctest: +SKIP
    ...     batch_flow("catalog.yaml")
    """
    return EarlyServer()
