"""Forge modules: releases fetched from a Forge v3 API and stored as trees.

``mod 'puppetlabs-stdlib', '9.6.0'`` asks the Forge
(``GET <forge>/v3/releases/puppetlabs-stdlib-9.6.0``) for the release, then
downloads its tarball from ``file_uri`` and checks ``file_sha256`` when the
Forge gives one. ``:latest`` or no version asks ``/v3/modules/<name>`` for
``current_release``. The tarball is unpacked straight into the storage
repository as a tree, never onto disk, and that tree is remembered under
``refs/forge/<author>-<name>/<version>`` so every environment and every
later deploy that wants the same version reuses it without a download.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import posixpath
import re
import tarfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

import pygit2
from pygit2.enums import FileMode

from gitstate.engine.storage import Storage
from gitstate.errors import GitStateError
from gitstate.settings import DEFAULT_FORGE_URL

DEFAULT_FORGE = DEFAULT_FORGE_URL
FORGE_REF_PREFIX = "refs/forge/"
_VERSION = re.compile(r"\A[0-9A-Za-z][0-9A-Za-z.+-]*\Z")
_MAX_TARBALL = 256 * 1024 * 1024


class ForgeError(GitStateError):
    """A Forge module could not be resolved, downloaded or unpacked.

    Attributes:
        module: the module's ``author-name``.
        version: the version asked for, if any.
        detail: what went wrong.
    """

    def __init__(self, module: str, version: str | None, detail: str) -> None:
        self.module = module
        self.version = version
        self.detail = detail
        at = f" {version}" if version else ""
        super().__init__(f"Forge module {module}{at}: {detail}")


class Forge:
    """A Forge v3 API client that installs releases into storage.

    Args:
        base_url: the API's base URL (``https://forgeapi.puppet.com``).
        storage: where release trees are kept.
        timeout: seconds for each HTTP request.
    """

    def __init__(self, base_url: str, storage: Storage, *, timeout: float = 30.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.storage = storage
        self.timeout = timeout
        self._latest: dict[str, tuple[str, float]] = {}
        self._lock = threading.Lock()

    def _get(self, module: str, version: str | None, url: str) -> bytes:
        parsed = urllib.parse.urlsplit(url)
        if parsed.scheme not in ("http", "https"):
            raise ForgeError(module, version, f"refusing non-HTTP URL {url!r}")
        request = urllib.request.Request(url, headers={"User-Agent": "gitstate"})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return response.read(_MAX_TARBALL + 1)
        except urllib.error.HTTPError as ex:
            raise ForgeError(module, version, f"GET {url} answered {ex.code}") from ex
        except (urllib.error.URLError, OSError) as ex:
            raise ForgeError(module, version, f"GET {url} failed: {ex}") from ex

    def _json(self, module: str, version: str | None, path: str) -> dict[str, Any]:
        data = self._get(module, version, self.base_url + path)
        try:
            parsed = json.loads(data)
        except ValueError as ex:
            raise ForgeError(module, version, f"{path} did not answer JSON") from ex
        if not isinstance(parsed, dict):
            raise ForgeError(module, version, f"{path} did not answer an object")
        return parsed

    def latest(self, module: str, *, since: float | None = None) -> str:
        """Return the current release's version.

        Args:
            module: ``author-name``.
            since: an answer asked for at or after this time is reused
                (one question per deploy run, not one per environment);
                None always asks.
        """
        with self._lock:
            cached = self._latest.get(module)
        if cached is not None and since is not None and cached[1] >= since:
            return cached[0]
        asked = time.time()
        data = self._json(module, None, f"/v3/modules/{urllib.parse.quote(module)}")
        version = (data.get("current_release") or {}).get("version")
        if not isinstance(version, str) or not _VERSION.match(version):
            raise ForgeError(module, None, "the Forge has no current release")
        with self._lock:
            self._latest[module] = (version, asked)
        return version

    def install(
        self, module: str, version: str | None, *, since: float | None = None
    ) -> tuple[str, pygit2.Oid]:
        """Return ``(version, tree id in storage)`` of a release, fetching it once.

        Args:
            module: ``author-name``.
            version: a version, ``:latest`` or None (both mean the latest).
            since: passed to :meth:`latest`.

        Raises:
            ForgeError: the release cannot be found, fetched or unpacked.
        """
        if version in (None, ":latest"):
            version = self.latest(module, since=since)
        assert version is not None
        if not _VERSION.match(version):
            raise ForgeError(module, version, "not a valid version")
        ref = f"{FORGE_REF_PREFIX}{module}/{version}"
        repo = self.storage.repo
        try:
            return version, repo.lookup_reference(ref).target
        except KeyError:
            pass
        release = self._json(
            module, version, f"/v3/releases/{urllib.parse.quote(module)}-{version}"
        )
        file_uri = release.get("file_uri")
        if not isinstance(file_uri, str) or not file_uri:
            raise ForgeError(module, version, "the release has no file_uri")
        data = self._get(module, version, urllib.parse.urljoin(self.base_url + "/", file_uri))
        if len(data) > _MAX_TARBALL:
            raise ForgeError(module, version, "tarball too large")
        expected = release.get("file_sha256")
        if expected and hashlib.sha256(data).hexdigest() != str(expected).lower():
            raise ForgeError(module, version, "tarball does not match file_sha256")
        tree = self._unpack(module, version, data)
        with contextlib.suppress(pygit2.AlreadyExistsError):  # another worker stored it
            repo.references.create(ref, tree, force=False)
        return version, tree

    def _unpack(self, module: str, version: str, data: bytes) -> pygit2.Oid:
        files: dict[str, tuple[pygit2.Oid, int]] = {}
        try:
            with tarfile.open(fileobj=io.BytesIO(data), mode="r:*") as tar:
                members = [
                    member for member in tar.getmembers() if member.isfile() or member.issym()
                ]
                names = [_member_path(module, version, member.name) for member in members]
                roots = {name.split("/", 1)[0] for name in names}
                strip = len(roots) == 1 and all("/" in name for name in names)
                for member, name in zip(members, names, strict=True):
                    path = name.split("/", 1)[1] if strip else name
                    if member.issym():
                        oid = self.storage.write_blob(member.linkname.encode())
                        files[path] = (oid, FileMode.LINK)
                        continue
                    handle = tar.extractfile(member)
                    content = handle.read() if handle is not None else b""
                    mode = FileMode.BLOB_EXECUTABLE if member.mode & 0o111 else FileMode.BLOB
                    files[path] = (self.storage.write_blob(content), mode)
        except (tarfile.TarError, EOFError, OSError) as ex:
            raise ForgeError(module, version, f"bad tarball: {ex}") from ex
        try:
            return self.storage.write_tree(files)
        except (ValueError, pygit2.GitError) as ex:
            raise ForgeError(module, version, f"bad tarball: {ex}") from ex


def _member_path(module: str, version: str, name: str) -> str:
    normal = posixpath.normpath(name.replace("\\", "/"))
    if normal.startswith(("/", "../")) or normal in ("..", "."):
        raise ForgeError(module, version, f"tarball member {name!r} is outside the module")
    return normal
