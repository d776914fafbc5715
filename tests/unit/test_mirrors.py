"""Mirror caches: URL checks before anything is touched, fetch with prune."""

from __future__ import annotations

import pytest

from gitstate.engine.mirrors import FetchFailed, Mirrors, UnsafeURL, check_url, mirror_name
from tests.support.deploy_fixtures import Remote


@pytest.mark.parametrize(
    "url",
    [
        "file:///srv/control.git",
        "https://git.example.test/control.git",
        "http://git.example.test/control.git",
        "ssh://git@git.example.test/control.git",
        "git://git.example.test/control.git",
        "git@git.example.test:puppet/control.git",
        "/srv/git/control.git",
        "relative/control.git",
    ],
)
def test_allowed_urls(url):
    assert check_url(url) == url


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("ext::sh -c touch% /tmp/pwned", "'ext::' remote helpers run commands"),
        ("fd::7", "'fd::' remote helpers run commands"),
        ("gopher://example.test/x", "transport 'gopher'"),
        ("-oProxyCommand=touch /tmp/x", "may not start with '-'"),
        ("ssh://-oProxyCommand=x/y", "host may not start with '-'"),
        ("-host:path", "may not start with '-'"),
        ("https://example.test/a\nb", "control characters"),
        ("", "empty"),
    ],
)
def test_refused_urls_name_the_url(url, reason):
    with pytest.raises(UnsafeURL) as info:
        check_url(url)
    assert reason in info.value.reason
    assert info.value.url == url


def test_mirror_names_are_safe_and_distinct():
    one = mirror_name("https://git.example.test/a/../../control.git")
    two = mirror_name("https://git.example.test/a/control.git")
    assert one != two
    for name in (one, two, mirror_name("ext::sh -c x"), mirror_name("/")):
        assert "/" not in name and not name.startswith(".") and name.endswith(".git")


def test_fetch_mirrors_branches_and_tags_and_prunes(tmp_path):
    remote = Remote(tmp_path, "control")
    first = remote.commit("production", {"a": "1\n"})
    remote.commit("gone", {"b": "2\n"})
    remote.tag("v1", "production")
    mirrors = Mirrors(tmp_path / "cache")
    mirrors.fetch(remote.url)
    assert mirrors.branches(remote.url) == {"production": first, "gone": remote.head("gone")}
    assert str(mirrors.open(remote.url).lookup_reference("refs/tags/v1").target) == first
    remote.delete_branch("gone")
    second = remote.commit("production", {"a": "2\n"})
    mirrors.fetch(remote.url)
    assert mirrors.branches(remote.url) == {"production": second}


def test_fetch_all_reports_each_failure(tmp_path):
    remote = Remote(tmp_path, "control")
    remote.commit("production", {"a": "1\n"})
    mirrors = Mirrors(tmp_path / "cache")
    missing = (tmp_path / "missing.git").as_uri()
    results = mirrors.fetch_all([remote.url, missing, "ext::sh -c x", remote.url])
    assert results[remote.url] is None
    assert isinstance(results[missing], FetchFailed)
    assert isinstance(results["ext::sh -c x"], FetchFailed)
    assert "refusing remote URL" in str(results["ext::sh -c x"])
    assert not (tmp_path / "cache" / mirror_name("ext::sh -c x")).exists()


def test_ssh_credentials_use_the_configured_key_or_the_agent(tmp_path):
    import pygit2
    from pygit2.enums import CredentialType

    from gitstate.engine.mirrors import _Callbacks

    key = tmp_path / "id_ed25519"
    key.write_text("not really a key\n")
    (tmp_path / "id_ed25519.pub").write_text("ssh-ed25519 AAAA\n")
    with_key = _Callbacks(0, str(key)).credentials("ssh://h/r", "deploy", CredentialType.SSH_KEY)
    assert isinstance(with_key, pygit2.Keypair)
    assert with_key.credential_tuple == ("deploy", str(key) + ".pub", str(key), "")
    agent = _Callbacks(0).credentials("git@h:r", None, CredentialType.SSH_KEY)
    assert isinstance(agent, pygit2.KeypairFromAgent)
    callbacks = _Callbacks(0)
    for _ in range(3):
        callbacks.credentials("ssh://h/r", "git", CredentialType.SSH_KEY)
    with pytest.raises(FetchFailed, match="authentication failed"):
        callbacks.credentials("ssh://h/r", "git", CredentialType.SSH_KEY)


def test_a_silent_server_times_out(tmp_path):
    import socket
    import threading

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(4)
    held = []

    def accept():
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            held.append(conn)  # never answer

    threading.Thread(target=accept, daemon=True).start()
    url = f"http://127.0.0.1:{server.getsockname()[1]}/control.git"
    try:
        mirrors = Mirrors(tmp_path / "cache", timeout=1.0)
        with pytest.raises(FetchFailed):
            mirrors.fetch(url)  # without libgit2's read timeout this would hang
    finally:
        server.close()
        for conn in held:
            conn.close()
        Mirrors(tmp_path / "cache")  # restore the default process-wide timeouts


def test_fresh_after_skips_a_mirror_fetched_since(tmp_path):
    import time

    remote = Remote(tmp_path, "control")
    first = remote.commit("production", {"a": "1\n"})
    mirrors = Mirrors(tmp_path / "cache")
    requested = time.time()
    mirrors.fetch(remote.url)
    fetched = mirrors.last_fetch(remote.url)
    assert fetched is not None and fetched >= requested
    remote.commit("production", {"a": "2\n"})
    mirrors.fetch(remote.url, fresh_after=requested)  # fetched since: left alone
    assert mirrors.branches(remote.url) == {"production": first}
    assert mirrors.fetch_all([remote.url], fresh_after=requested) == {remote.url: None}
    assert mirrors.branches(remote.url) == {"production": first}
    mirrors.fetch(remote.url, fresh_after=time.time() + 1)  # requested later: fetch
    assert mirrors.branches(remote.url) == {"production": remote.head("production")}
