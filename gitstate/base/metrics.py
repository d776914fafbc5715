"""Prometheus instruments, shared by every gitstate process.

Services call the small functions below (:func:`state_committed`,
:func:`cas_conflict`, :func:`http_request`, :func:`deploy_finished`); they
never fail the caller and cost next to nothing when nobody scrapes.

Under ``gitstate serve`` the server's gunicorn workers and the deploy
workers are separate processes, so prometheus-client runs in *multiprocess
mode*: the supervisor (or ``gitstate web`` on its own) points
``PROMETHEUS_MULTIPROC_DIR`` at a fresh directory before any child starts,
every process writes its values to memory-mapped files there, and
``/metrics`` merges the files of all of them per scrape. prometheus-client
picks its mode once, when it is first imported, which is why it is imported
lazily here: a process that never sets the variable (tests, the CLI) keeps
its values in memory, and ``/metrics`` serves those.

Values computed at scrape time (queue length, file-sync lag) are not
instruments: they come from the collectors handed to :func:`exposition`.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

#: The variable prometheus-client reads to choose multiprocess mode.
DIRECTORY_ENV = "PROMETHEUS_MULTIPROC_DIR"
#: Deploys take seconds to many minutes.
DEPLOY_BUCKETS = (0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0)
#: HTTP requests: milliseconds, but long polls hold a request for up to a minute.
HTTP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})

_lock = threading.Lock()
_instruments: dict[str, Any] | None = None
_broken = False


def _build() -> dict[str, Any]:
    """Create the instruments (imports prometheus-client, fixing its mode)."""
    from prometheus_client import CollectorRegistry, Counter, Histogram

    registry = CollectorRegistry(auto_describe=True)
    return {
        "registry": registry,
        "commits": Counter(
            "gitstate_state_commits",
            "Commits made to the state branch, by operation.",
            ["operation"],
            registry=registry,
        ),
        "conflicts": Counter(
            "gitstate_cas_conflicts",
            "Compare-and-swap attempts on the state branch that found the ref moved.",
            registry=registry,
        ),
        "prepared": Counter(
            "gitstate_state_prepared",
            "Changes prepared before the writer lock, by whether they could be "
            "committed as prepared (kept) or had to run again on a newer tip (redone).",
            ["outcome"],
            registry=registry,
        ),
        "requests": Counter(
            "gitstate_http_requests",
            "HTTP requests answered, by method, route template and status code.",
            ["method", "route", "status"],
            registry=registry,
        ),
        "request_seconds": Histogram(
            "gitstate_http_request_seconds",
            "Time to answer an HTTP request, by route template.",
            ["route"],
            buckets=HTTP_BUCKETS,
            registry=registry,
        ),
        "deploy_seconds": Histogram(
            "gitstate_deploy_duration_seconds",
            "Time a deploy worker spent on one deploy, by outcome.",
            ["status"],
            buckets=DEPLOY_BUCKETS,
            registry=registry,
        ),
    }


def _get() -> dict[str, Any] | None:
    global _instruments, _broken
    if _instruments is None and not _broken:
        with _lock:
            if _instruments is None and not _broken:
                try:
                    _instruments = _build()
                except Exception:  # metrics must never break the service
                    _broken = True
                    log.exception("metrics are disabled: prometheus-client failed to start")
    return _instruments


def start() -> None:
    """Build the instruments now instead of at the first sample.

    The first sample imports prometheus-client, tens of milliseconds; a
    worker calls this when it starts so that no request pays for it.
    """
    _get()


def _record(name: str, labels: tuple[str, ...], action: str, value: float = 1.0) -> None:
    instruments = _get()
    if instruments is None:
        return
    try:
        metric = instruments[name]
        if labels:
            metric = metric.labels(*labels)
        getattr(metric, action)(value)
    except Exception:  # a full disk or a wiped directory: lose the sample, not the request
        log.warning("could not record metric %s", name, exc_info=True)


def state_committed(operation: str) -> None:
    """Count one commit on the state branch."""
    _record("commits", (operation,), "inc")


def cas_conflict() -> None:
    """Count one compare-and-swap that found the state ref moved."""
    _record("conflicts", (), "inc")


def prepared_change(kept: bool) -> None:
    """Count one change prepared before the writer lock, kept or redone."""
    _record("prepared", ("kept" if kept else "redone",), "inc")


def http_request(method: str, route: str, status: int, seconds: float) -> None:
    """Count one answered request and observe its duration.

    Args:
        method: the HTTP method (anything unusual is counted as ``OTHER``).
        route: the route template (not the path, which would make a series
            per gate or deploy id).
        status: the response's status code.
        seconds: time from the start of the request to its answer.
    """
    method = method if method in _METHODS else "OTHER"
    _record("requests", (method, route, str(status)), "inc")
    _record("request_seconds", (route,), "observe", seconds)


def deploy_finished(status: str, seconds: float) -> None:
    """Observe one deploy's duration, labelled ``complete`` or ``failed``."""
    _record("deploy_seconds", (status,), "observe", seconds)


# -- multiprocess plumbing -------------------------------------------------------------


def configured_directory(enabled: bool, directory: Path | None, datadir: Path) -> Path | None:
    """Return where multiprocess metrics go, or None when metrics are off.

    ``$PROMETHEUS_MULTIPROC_DIR`` wins; then ``directory`` (``metrics.dir``);
    then ``DATADIR/metrics``. ``enabled`` is ``metrics.enabled``.
    """
    if not enabled:
        return None
    given = os.environ.get(DIRECTORY_ENV) or directory
    return Path(given).expanduser().absolute() if given else datadir / "metrics"


def prepare_directory(directory: Path) -> Path:
    """Empty ``directory`` of old value files and export it to child processes.

    Call once per start, before any process that records metrics is forked.
    Only prometheus-client's ``*.db`` files are removed, so a mistaken path
    loses nothing else.
    """
    directory.mkdir(parents=True, exist_ok=True)
    for stale in directory.glob("*.db"):
        stale.unlink(missing_ok=True)
    os.environ[DIRECTORY_ENV] = str(directory)
    return directory


def multiprocess() -> bool:
    """Tell whether this process records into a shared directory."""
    return bool(os.environ.get(DIRECTORY_ENV))


def mark_process_dead(pid: int) -> None:
    """Drop the live-gauge files of an exited process (gunicorn's ``child_exit``)."""
    if not multiprocess():
        return
    try:
        from prometheus_client import multiprocess as mp

        mp.mark_process_dead(pid)
    except Exception:
        log.warning("could not clean up metrics of process %s", pid, exc_info=True)


def exposition(collectors: Iterable[Any] = (), accept: str | None = None) -> tuple[bytes, str]:
    """Render every process's instruments and ``collectors`` for a scrape.

    Args:
        collectors: extra prometheus-client collectors evaluated now (the
            scrape-time gauges).
        accept: the scraper's ``Accept`` header (OpenMetrics if it asks).

    Returns:
        the body and its content type.
    """
    from prometheus_client import CollectorRegistry
    from prometheus_client import exposition as expo

    registry = CollectorRegistry(auto_describe=False)
    instruments = _get()
    if multiprocess():
        from prometheus_client import multiprocess as mp

        mp.MultiProcessCollector(registry)
    elif instruments is not None:
        registry.register(_Forward(instruments["registry"]))
    for collector in collectors:
        registry.register(collector)
    encoder, content_type = expo.choose_encoder(accept or "")
    return encoder(registry), content_type


class _Forward:
    """A collector that yields another registry's metrics (in-process mode)."""

    def __init__(self, registry: Any) -> None:
        self._registry = registry

    def collect(self) -> Iterable[Any]:
        return self._registry.collect()
