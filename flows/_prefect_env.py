"""Prefect settings for a machine with no server and no network.

Must run before ``prefect`` is first imported: Prefect reads its settings
from the environment at import time. Importing this module applies them
(:func:`configure_prefect`); the modules of ``emfuse.flows`` that use Prefect
import it first, so ``import emfuse`` or ``import emfuse.flows`` changes no
environment variable, and the set-up happens at the first use of Prefect.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path

import platformdirs

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


def start_server_early() -> Callable[[], None]:
    """Begin starting Prefect's temporary API server now, in a thread; returns the function that
    waits for it.

    A batch with no ``PREFECT_API_URL`` runs against a server that Prefect starts in a process of
    its own at the first flow call, and waits for: 8-20 s on a 2-core machine, most of it the other
    process importing Prefect's server and opening its database. Started here, before the batch's
    own imports and checks, that time overlaps them. The server is Prefect's own (the one its
    flow call would start: one per process), so the flow finds it running. Call the returned
    function before the first flow call: the flow must not find a server that is still starting.
    Any failure is left to the flow call, which starts the server again and reports it as usual.
    """
    thread = threading.Thread(target=_start_server, name="emfuse-prefect-server", daemon=True)
    thread.start()
    return thread.join


def _start_server() -> None:
    try:
        from prefect.settings import get_current_settings

        settings = get_current_settings()
        if settings.api.url or not settings.server.ephemeral.enabled:
            return  # a configured server (nothing to start), or none allowed (the flow says so)
        from prefect.server.api.server import SubprocessASGIServer

        SubprocessASGIServer().start()
    except Exception:  # the flow call starts it again and raises what went wrong
        logging.getLogger(__name__).debug("early start of Prefect's server failed", exc_info=True)
