"""Notice when a bare repository's refs, or a directory's files, change, without polling.

:class:`RefWatch` is used by local file-sync clients (to sync as soon as a
code-commit lands) and by the server's long-poll endpoint (to answer
waiting clients). Both only need to know that *something* changed: the
listener re-resolves the ref it cares about with pygit2 and compares it to
what it last saw. :class:`DirectoryWatch` tells the server that a client's
check-in file was written, by whichever process wrote it.

What git does to the refs on disk (watchdog 7 with inotify, git 2.39):
``update-ref`` creates ``refs/heads/x.lock`` and *moves* it onto
``refs/heads/x``; ``pack-refs`` deletes loose refs and moves
``packed-refs.new`` onto ``packed-refs``. So every event under ``refs/``,
on ``packed-refs`` or under ``reftable/`` counts, moves included, except
those on ``*.lock`` files (the move *from* a lock still counts, through
its destination). Bursts are batched by watchdog's own
:class:`~watchdog.utils.event_debouncer.EventDebouncer`. Where inotify is
unavailable (NFS, watch limits) the polling observer stands in.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver
from watchdog.observers.polling import PollingObserver
from watchdog.utils.event_debouncer import EventDebouncer

log = logging.getLogger(__name__)

#: Seconds events are batched before the listener is told.
DEBOUNCE = 0.02


def is_ref_event(repo: Path, event: FileSystemEvent) -> bool:
    """Return whether ``event`` may mean a ref of ``repo`` changed."""
    paths = [event.src_path]
    if event.event_type == "moved":
        paths = [getattr(event, "dest_path", "") or ""]
    for raw in paths:
        path = os.fsdecode(raw)
        if not path or path.endswith(".lock"):
            continue
        rel = os.path.relpath(path, repo)
        if rel in ("packed-refs", "refs", "reftable") or rel.startswith(("refs/", "reftable/")):
            return True
    return False


class _Handler(FileSystemEventHandler):
    def __init__(self, repo: Path, debouncer: EventDebouncer) -> None:
        self._repo = repo
        self._debouncer = debouncer

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.event_type in ("opened", "closed_no_write"):
            return
        if is_ref_event(self._repo, event):
            self._debouncer.handle_event(event)


def _observer(polling: bool) -> BaseObserver:
    return PollingObserver(timeout=1.0) if polling else Observer()


class RefWatch:
    """Call ``on_change`` (from a watchdog thread) when refs may have changed.

    Args:
        repo: the bare repository.
        on_change: called with no arguments after each debounced burst; it
            must be quick (set an event, notify a condition).
        polling: use the polling observer (for file systems without inotify).
    """

    def __init__(self, repo: Path, on_change: Callable[[], None], *, polling: bool = False) -> None:
        self.repo = Path(repo).resolve()
        self._on_change = on_change
        self._polling = polling
        self._observer: BaseObserver | None = None
        self._debouncer: EventDebouncer | None = None
        self._lock = threading.Lock()

    def start(self) -> RefWatch:
        """Start watching; falls back to polling if inotify cannot be used."""
        with self._lock:
            if self._observer is not None:
                return self
            self._debouncer = EventDebouncer(DEBOUNCE, lambda events: self._on_change())
            self._debouncer.start()
            handler = _Handler(self.repo, self._debouncer)
            try:
                self._observer = self._schedule(handler, polling=self._polling)
            except OSError as ex:
                log.warning("cannot watch %s with inotify (%s); polling instead", self.repo, ex)
                self._observer = self._schedule(handler, polling=True)
        return self

    def _schedule(self, handler: _Handler, *, polling: bool) -> BaseObserver:
        observer = _observer(polling)
        (self.repo / "refs").mkdir(exist_ok=True)
        # The repository root, not recursively (packed-refs lives there), and
        # refs/ recursively: objects/ would flood the handler during fetches.
        observer.schedule(handler, str(self.repo), recursive=False)
        observer.schedule(handler, str(self.repo / "refs"), recursive=True)
        if (self.repo / "reftable").is_dir():
            observer.schedule(handler, str(self.repo / "reftable"), recursive=True)
        observer.daemon = True
        observer.start()
        return observer

    def stop(self) -> None:
        """Stop the observer and the debouncer threads."""
        with self._lock:
            observer, self._observer = self._observer, None
            debouncer, self._debouncer = self._debouncer, None
        if observer is not None:
            observer.stop()
            observer.join(5)
        if debouncer is not None:
            debouncer.stop()
            debouncer.join(5)

    def __enter__(self) -> RefWatch:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class _FileHandler(FileSystemEventHandler):
    def __init__(self, accept: Callable[[str], bool], on_change: Callable[[], None]) -> None:
        self._accept = accept
        self._on_change = on_change

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.event_type in ("opened", "closed_no_write") or event.is_directory:
            return
        raw = getattr(event, "dest_path", "") if event.event_type == "moved" else event.src_path
        if raw and self._accept(os.path.basename(os.fsdecode(raw))):
            self._on_change()


class DirectoryWatch:
    """Call ``on_change`` (from a watchdog thread) when a file in one directory changes.

    Files written by replacing them (a temporary file renamed over the
    name) count by the name they are renamed to.

    Args:
        directory: watched, not recursively (created if missing).
        on_change: called once per event on an accepted file; it must be
            quick (notify a condition).
        accept: which file names count.
        polling: use the polling observer (for file systems without inotify).
    """

    def __init__(
        self,
        directory: Path,
        on_change: Callable[[], None],
        *,
        accept: Callable[[str], bool] = lambda name: True,
        polling: bool = False,
    ) -> None:
        self.directory = Path(directory)
        self._handler = _FileHandler(accept, on_change)
        self._polling = polling
        self._observer: BaseObserver | None = None
        self._lock = threading.Lock()

    def start(self) -> DirectoryWatch:
        """Start watching; falls back to polling if inotify cannot be used."""
        with self._lock:
            if self._observer is not None:
                return self
            self.directory.mkdir(parents=True, exist_ok=True)
            try:
                self._observer = self._schedule(polling=self._polling)
            except OSError as ex:
                log.warning("cannot watch %s with inotify (%s); polling", self.directory, ex)
                self._observer = self._schedule(polling=True)
        return self

    def _schedule(self, *, polling: bool) -> BaseObserver:
        observer = _observer(polling)
        observer.schedule(self._handler, str(self.directory), recursive=False)
        observer.daemon = True
        observer.start()
        return observer

    def stop(self) -> None:
        """Stop the observer thread."""
        with self._lock:
            observer, self._observer = self._observer, None
        if observer is not None:
            observer.stop()
            observer.join(5)
