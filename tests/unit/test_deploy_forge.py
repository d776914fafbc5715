"""Forge modules from a local Forge v3 API served on 127.0.0.1."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from gitstate.engine.environments import DeployFailure
from tests.support.deploy_fixtures import Remote, deployer, tree_files


def tarball(
    module: str, version: str, files: dict[str, str], links: dict[str, str] | None = None
) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for path, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(f"{module}-{version}/{path}")
            info.size = len(data)
            info.mode = 0o755 if path.endswith(".sh") else 0o644
            tar.addfile(info, io.BytesIO(data))
        for path, target in (links or {}).items():
            info = tarfile.TarInfo(f"{module}-{version}/{path}")
            info.type = tarfile.SYMTYPE
            info.linkname = target
            tar.addfile(info)
    return buffer.getvalue()


class FakeForge:
    """Releases and tarballs behind a real HTTP server; counts requests."""

    def __init__(self) -> None:
        self.releases: dict[str, dict] = {}
        self.files: dict[str, bytes] = {}
        self.latest: dict[str, str] = {}
        self.requests: list[str] = []
        forge = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                forge.requests.append(self.path)
                body = forge.answer(self.path)
                if body is None:
                    self.send_response(404)
                    self.end_headers()
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def add(
        self,
        module: str,
        version: str,
        files: dict[str, str],
        *,
        sha: str | None = "ok",
        links=None,
    ):
        data = tarball(module, version, files, links)
        uri = f"/v3/files/{module}-{version}.tar.gz"
        self.files[uri] = data
        release = {"file_uri": uri, "version": version}
        if sha == "ok":
            release["file_sha256"] = hashlib.sha256(data).hexdigest()
        elif sha:
            release["file_sha256"] = sha
        self.releases[f"/v3/releases/{module}-{version}"] = release
        self.latest[module] = version

    def answer(self, path: str) -> bytes | None:
        if path in self.files:
            return self.files[path]
        if path in self.releases:
            return json.dumps(self.releases[path]).encode()
        module = path.removeprefix("/v3/modules/")
        if module in self.latest:
            return json.dumps({"current_release": {"version": self.latest[module]}}).encode()
        return None

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def forge():
    server = FakeForge()
    yield server
    server.close()


def control_with(tmp_path, puppetfiles: dict[str, str]) -> Remote:
    root = tmp_path / "remotes"
    root.mkdir(exist_ok=True)
    control = Remote(root, "control")
    for branch, text in puppetfiles.items():
        control.commit(branch, {"Puppetfile": text}, base="production")
    return control


def test_forge_versions_latest_and_cache(tmp_path, forge):
    forge.add(
        "puppetlabs-stdlib",
        "9.0.0",
        {"metadata.json": "{}\n", "spec/x_spec.rb": "x\n", "bin/run.sh": "#!/bin/sh\n"},
    )
    forge.add("puppetlabs-stdlib", "9.1.0", {"metadata.json": '{"v": 91}\n'})
    control = control_with(
        tmp_path,
        {
            "production": "mod 'puppetlabs-stdlib', '9.0.0'\n",
            "dev": "mod 'puppetlabs/stdlib', :latest\n",
            "qa": "mod 'puppetlabs-stdlib', '9.0.0'\n",
        },
    )
    dep = deployer(tmp_path / "data", control, forge_url=forge.url)
    prod = dep.deploy("production")
    files = tree_files(dep, "production")
    assert files["modules/stdlib/metadata.json"] == b"{}\n"
    assert "modules/stdlib/spec/x_spec.rb" not in files
    assert prod.module_deploys[0].version == "9.0.0" and prod.module_deploys[0].sha is None
    dev = dep.deploy("dev")
    assert dev.module_deploys[0].version == "9.1.0"
    assert tree_files(dep, "dev")["modules/stdlib/metadata.json"] == b'{"v": 91}\n'
    downloads = [path for path in forge.requests if path.startswith("/v3/files/")]
    dep.deploy("qa")
    again = [path for path in forge.requests if path.startswith("/v3/files/")]
    assert again == downloads  # 9.0.0 came from the cache
    assert len(downloads) == 2
    # the executable bit survives
    tree = dep.storage.repo.revparse_single("refs/environments/production:modules/stdlib/bin")
    assert tree["run.sh"].filemode == 0o100755


def test_forge_checksum_mismatch_and_missing_release(tmp_path, forge):
    forge.add("acme-bad", "1.0.0", {"a": "b"}, sha="0" * 64)
    control = control_with(
        tmp_path,
        {"production": "mod 'acme-bad', '1.0.0'\n", "dev": "mod 'acme-nothere', '2.0.0'\n"},
    )
    dep = deployer(tmp_path / "data", control, forge_url=forge.url)
    with pytest.raises(DeployFailure, match="does not match file_sha256"):
        dep.deploy("production")
    with pytest.raises(DeployFailure, match=r"acme-nothere 2\.0\.0.*404"):
        dep.deploy("dev")
    assert dep.environments() == {}


def test_forge_tarball_with_escaping_symlink_fails(tmp_path, forge):
    forge.add("acme-evil", "1.0.0", {"a": "b"}, links={"files/x": "../../../../etc/passwd"})
    control = control_with(tmp_path, {"production": "mod 'acme-evil', '1.0.0'\n"})
    dep = deployer(tmp_path / "data", control, forge_url=forge.url)
    with pytest.raises(DeployFailure, match="points outside the environment"):
        dep.deploy("production")


def test_forge_module_without_version_is_installed_once_then_kept(tmp_path, forge):
    forge.add("acme-keep", "1.0.0", {"v": "1\n"})
    control = control_with(tmp_path, {"production": "mod 'acme-keep'\n"})
    dep = deployer(tmp_path / "data", control, forge_url=forge.url)
    assert dep.deploy("production").module_deploys[0].version == "1.0.0"
    forge.add("acme-keep", "1.1.0", {"v": "2\n"})
    again = dep.deploy("production")
    assert again.skipped
    assert again.module_deploys[0].version == "1.0.0"


def test_latest_is_asked_once_per_collection(tmp_path, forge):
    forge.add("acme-new", "1.0.0", {"v": "1\n"})
    control = control_with(
        tmp_path,
        {"production": "mod 'acme-new', :latest\n", "dev": "mod 'acme-new', :latest\n"},
    )
    dep = deployer(tmp_path / "data", control, forge_url=forge.url)
    collection = dep.collect()
    for env in collection.names():
        dep.deploy(env, collection=collection)
    assert forge.requests.count("/v3/modules/acme-new") == 1
    forge.add("acme-new", "2.0.0", {"v": "2\n"})
    assert dep.deploy("production").module_deploys[0].version == "2.0.0"


def test_forge_tarball_with_a_git_directory_fails(tmp_path, forge):
    forge.add("acme-sneaky", "1.0.0", {"a": "b", ".git/hooks/post-checkout": "#!/bin/sh\n"})
    control = control_with(tmp_path, {"production": "mod 'acme-sneaky', '1.0.0'\n"})
    dep = deployer(tmp_path / "data", control, forge_url=forge.url)
    with pytest.raises(DeployFailure, match="bad tarball"):
        dep.deploy("production")
