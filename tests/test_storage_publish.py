"""Publishing code-commits when other publishers or git maintenance get in the way."""

from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path

import pygit2
import pytest
from pygit2.enums import FileMode

from gitstate.storage import PublishConflict, Published, Storage


def _environment(storage: Storage, name: str, text: str) -> Published:
    """Write a one-file environment tree into storage and describe it."""
    repo = storage.repo
    builder = repo.TreeBuilder()
    builder.insert("site.pp", repo.create_blob(text.encode()), FileMode.BLOB)
    tree = str(builder.write())
    return Published(name, "0" * 40, tree, f"sig-{text}", f"key-{text}")


def test_a_publisher_that_holds_the_lock_too_long_gives_a_clear_error(tmp_path: Path) -> None:
    storage = Storage(tmp_path / "storage.git", lock_timeout=0.3)
    first = storage.publish({"production": _environment(storage, "production", "one")}, "one")
    lock = os.open(tmp_path / "storage.git" / "gitstate-code.lock", os.O_RDWR)
    fcntl.flock(lock, fcntl.LOCK_EX)  # another publisher, hung while holding it
    try:
        with pytest.raises(PublishConflict, match=r"another publisher held gitstate-code\.lock"):
            storage.publish({"production": _environment(storage, "production", "two")}, "two")
    finally:
        os.close(lock)
    assert storage.code_commit() == first
    second = storage.publish({"production": _environment(storage, "production", "two")}, "two")
    assert storage.published(second)["production"].signature == "sig-two"


def test_an_object_write_lost_to_git_maintenance_is_retried(tmp_path: Path) -> None:
    storage = Storage(tmp_path / "storage.git", deadline=5)
    env = _environment(storage, "production", "one")
    repo = storage.repo
    real = repo.create_commit
    failures = [OSError(errno.ENOENT, "No such file or directory", "objects/ab/tmp_object")]

    def flaky(*args: object) -> pygit2.Oid:
        if failures:
            raise failures.pop()
        return real(*args)

    repo.create_commit = flaky  # what a concurrent `git prune-packed` can cause
    commit = storage.publish({"production": env}, "deploy production")
    assert not failures
    assert commit == storage.code_commit()
    assert storage.published()["production"].tree == env.tree
