"""Publishing code-commits when other publishers or git maintenance get in the way."""

from __future__ import annotations

import errno
import fcntl
import json
import os
from pathlib import Path

import pygit2
import pytest
from pygit2.enums import FileMode

from gitstate.engine.storage import PublishConflict, Published, Storage


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


def _legacy_code_commit(storage: Storage, envs: dict[str, Published]) -> str:
    """Write a code-commit the way gitstate did before published/: one environments.json."""
    repo = storage.repo
    builder = repo.TreeBuilder()
    for name, item in envs.items():
        builder.insert(name, pygit2.Oid(hex=item.tree), FileMode.TREE)
    listed = {
        name: {
            "commit": item.commit,
            "tree": item.tree,
            "signature": item.signature,
            "deploy_key": item.deploy_key,
        }
        for name, item in envs.items()
    }
    manifest = json.dumps({"schema_version": 1, "environments": listed}, indent=2).encode()
    root = repo.TreeBuilder()
    root.insert("environments", builder.write(), FileMode.TREE)
    root.insert("environments.json", repo.create_blob(manifest), FileMode.BLOB)
    sig = pygit2.Signature("gitstate", "gitstate@example.test")
    return str(repo.create_commit("refs/heads/code", sig, sig, "old", root.write(), []))


def test_a_single_blob_manifest_is_read_and_converted_by_the_next_publish(tmp_path: Path) -> None:
    storage = Storage(tmp_path / "storage.git")
    production = _environment(storage, "production", "one")
    development = _environment(storage, "development", "dev")
    old = _legacy_code_commit(storage, {"production": production, "development": development})
    assert storage.published(old) == {"production": production, "development": development}
    assert storage.published_one("development") == development
    assert storage.published_one("nosuch") is None

    testing = _environment(storage, "testing", "test")
    new = storage.publish({"testing": testing}, "deploy testing")
    assert new != old
    assert storage.published() == {
        "production": production,
        "development": development,
        "testing": testing,
    }
    root = storage.repo[new].peel(pygit2.Commit).tree
    assert sorted(entry.name for entry in storage.repo[root["published"].id]) == [
        "development.json",
        "production.json",
        "testing.json",
    ]
    # The old code-commit still reads as it did.
    assert storage.published_one("testing", old) is None
    assert storage.published_one("production", old) == production


def test_a_publish_rewrites_only_the_manifest_of_the_environment_it_changes(
    tmp_path: Path,
) -> None:
    storage = Storage(tmp_path / "storage.git")
    first = storage.publish(
        {name: _environment(storage, name, name) for name in ("a", "b", "c")}, "three"
    )
    second = storage.publish({"b": _environment(storage, "b", "b2")}, "b again")
    blobs = {}
    for commit in (first, second):
        root = storage.repo[commit].peel(pygit2.Commit).tree
        blobs[commit] = {e.name: e.id for e in storage.repo[root["published"].id]}
    assert blobs[first]["a.json"] == blobs[second]["a.json"]
    assert blobs[first]["c.json"] == blobs[second]["c.json"]
    assert blobs[first]["b.json"] != blobs[second]["b.json"]
    assert storage.published_one("b").signature == "sig-b2"
    # Removing an environment removes its manifest blob with its tree.
    third = storage.publish({"a": None}, "remove a")
    assert storage.published(third).keys() == {"b", "c"}
    assert storage.published_one("a") is None


def test_readers_older_than_published_fail_instead_of_seeing_no_environments(
    tmp_path: Path,
) -> None:
    storage = Storage(tmp_path / "storage.git")
    commit = storage.publish({"production": _environment(storage, "production", "one")}, "one")
    root = storage.repo[commit].peel(pygit2.Commit).tree
    stub = json.loads(storage.repo[root["environments.json"].id].data)
    # What a schema-1 client did with environments.json: an empty result
    # would have made it remove every environment from its live directory.
    with pytest.raises(AttributeError):
        stub.get("environments", {}).items()
