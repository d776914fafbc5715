"""``POST /code-manager/v1/webhook``: each provider's payloads on a real control repo.

Payload fixtures under tests/fixtures/webhooks/ follow each provider's
documented push format (trimmed of fields gitstate does not read). Deploys
run through a real deploy worker (``run_once`` in the test thread), and
removals through the real engine and storage repository.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import urllib.parse
from pathlib import Path
from typing import Any

import falcon.testing
import pytest

from gitstate.codemanager.webhooks import MalformedPayload, parse
from gitstate.config import Config
from gitstate.deploys.worker import DeployWorker
from gitstate.services import Services
from gitstate.web.app import create_app
from tests.support.client import Client
from tests.support.deploy_fixtures import Remote
from tests.support.helpers import git

FIXTURES = Path(__file__).parents[1] / "fixtures" / "webhooks"
HOOK = "/code-manager/v1/webhook"
STATUS = "/code-manager/v1/deploys/status"

#: The header each provider sends to say what happened.
EVENT_HEADERS: dict[str, dict[str, str]] = {
    "github": {"X-GitHub-Event": "push"},
    "gitlab": {"X-Gitlab-Event": "Push Hook"},
    "bitbucket": {"X-Event-Key": "repo:push"},
    "bitbucket-server": {"X-Event-Key": "repo:refs_changed"},
    "stash": {},
    "tfs-git": {},
}
#: What each ``<provider>-push.json`` pushes.
PUSHED = {
    "github": ["dev"],
    "gitlab": ["dev"],
    "bitbucket": ["production", "dev"],
    "bitbucket-server": ["production", "dev"],
    "stash": ["dev"],
    "tfs-git": ["dev"],
}
PROVIDERS = list(PUSHED)


def fixture(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


class Harness:
    """The app over a control repo with ``production`` and ``dev``, and one worker."""

    def __init__(
        self,
        tmp_path: Path,
        webhooks: dict[str, Any] | None = None,
        auth: dict[str, Any] | None = None,
    ) -> None:
        self.remote = Remote(tmp_path / "remotes", "control")
        for branch in ("production", "dev"):
            self.remote.commit(
                branch,
                {"Puppetfile": "# no modules\n", "manifests/site.pp": f"# {branch}\n"},
                base="production",
            )
        config = Config.from_mapping(
            {
                "datadir": str(tmp_path / "data"),
                "state": {"fsync": False},
                "auth": auth or {"enabled": False},
                "sources": {"puppet": {"remote": self.remote.url, "invalid_branches": "correct"}},
                "webhooks": webhooks,
            }
        )
        self.services = Services(config)
        self.client = Client(create_app(services=self.services))
        code_manager = self.services.code_manager
        self.queue = code_manager.queue
        self.engine = code_manager.engine
        self.worker = DeployWorker(self.queue, self.engine, 0, config.datadir / "locks")

    def post(
        self,
        provider: str,
        body: bytes,
        headers: dict[str, str] | None = None,
        **params: str,
    ) -> falcon.testing.Result:
        return self.client.simulate_post(
            HOOK,
            params={"type": provider, **params},
            body=body,
            headers={"Content-Type": "application/json", **(headers or {})},
        )

    def queued(self) -> list[str]:
        return [entry["environment"] for entry in self.queue.active()]

    def deploy_all_queued(self) -> None:
        while self.worker.run_once():
            pass

    def deployed(self) -> list[str]:
        status = self.client.simulate_get(STATUS).json
        return [entry["environment"] for entry in status["file-sync-storage-status"]["deployed"]]


@pytest.fixture
def harness(tmp_path: Path) -> Harness:
    return Harness(tmp_path)


# -- pushes ----------------------------------------------------------------------------


@pytest.mark.parametrize("provider", PROVIDERS)
def test_push_queues_one_deploy_per_branch(harness: Harness, provider: str) -> None:
    result = harness.post(provider, fixture(f"{provider}-push.json"), EVENT_HEADERS[provider])
    assert result.status_code == 200
    assert result.json == {"status": "OK"}
    assert harness.queued() == PUSHED[provider]
    for entry in harness.queue.active():
        record = harness.queue.get(entry["id"])
        assert record["requested_by"] == f"webhook:{provider}"
        assert record["reason"] == "webhook"


def test_pushed_branch_is_deployed_by_the_worker(harness: Harness) -> None:
    harness.post("github", fixture("github-push.json"), EVENT_HEADERS["github"])
    harness.deploy_all_queued()
    status = harness.client.simulate_get(STATUS).json
    (deployed,) = status["file-sync-storage-status"]["deployed"]
    assert deployed["environment"] == "dev"
    assert deployed["deploy-signature"] == harness.remote.head("dev")
    assert "dev" in harness.engine.environments()


def test_prefix_names_the_environment(harness: Harness) -> None:
    result = harness.post(
        "github", fixture("github-push.json"), EVENT_HEADERS["github"], prefix="qa"
    )
    assert result.json == {"status": "OK"}
    assert harness.queued() == ["qa_dev"]
    record = harness.queue.get(harness.queue.active()[0]["id"])
    assert record["requested_as"] == "qa_dev"


def test_branch_names_are_corrected_as_r10k_does(harness: Harness) -> None:
    payload = json.loads(fixture("github-push.json"))
    payload["ref"] = "refs/heads/feature/login-banner"
    harness.post("github", json.dumps(payload).encode(), EVENT_HEADERS["github"])
    (entry,) = harness.queue.active()
    assert entry["environment"] == "feature_login_banner"
    assert harness.queue.get(entry["id"])["requested_as"] == "feature/login-banner"


def test_a_second_push_joins_the_queued_deploy(harness: Harness) -> None:
    for _ in range(2):
        harness.post("gitlab", fixture("gitlab-push.json"), EVENT_HEADERS["gitlab"])
    assert harness.queued() == ["dev"]


@pytest.mark.parametrize(
    ("name", "headers"),
    [
        ("github-tag.json", {"X-GitHub-Event": "push"}),
        ("github-ping.json", {"X-GitHub-Event": "ping"}),
        ("github-ping.json", {}),
        ("github-push.json", {"X-GitHub-Event": "pull_request"}),
        ("gitlab-tag.json", {"X-Gitlab-Event": "Tag Push Hook"}),
        ("bitbucket-tag.json", {"X-Event-Key": "repo:push"}),
        ("bitbucket-server-tag.json", {"X-Event-Key": "repo:refs_changed"}),
        ("bitbucket-server-push.json", {"X-Event-Key": "diagnostics:ping"}),
        ("stash-tag.json", {}),
        ("tfs-git-tag.json", {}),
    ],
)
def test_tags_pings_and_other_events_do_nothing(
    harness: Harness, name: str, headers: dict[str, str]
) -> None:
    provider = name.rsplit("-", 1)[0]
    before = harness.services.store.head()
    result = harness.post(provider, fixture(name), headers)
    assert result.status_code == 200
    assert result.json == {"status": "OK"}
    assert harness.queued() == []
    assert harness.services.store.head() == before


# -- deletions -------------------------------------------------------------------------


@pytest.mark.parametrize("provider", PROVIDERS)
def test_branch_deletion_removes_the_environment_at_once(harness: Harness, provider: str) -> None:
    harness.queue.request([("dev", "dev"), ("production", "production")], actor="setup")
    harness.deploy_all_queued()
    assert harness.deployed() == ["dev", "production"]
    harness.remote.delete_branch("dev")

    result = harness.post(provider, fixture(f"{provider}-delete.json"), EVENT_HEADERS[provider])

    assert result.json == {"status": "OK"}
    assert harness.queued() == []  # a deletion deploys nothing
    assert sorted(harness.engine.environments()) == ["production"]
    assert harness.deployed() == ["production"]
    subject = git("log", "-1", "--format=%s", "state", cwd=harness.services.config.state_repo)
    assert subject.startswith(f"webhook:{provider} removed dev: branch deleted")


def test_stale_deletion_keeps_an_environment_whose_branch_exists(harness: Harness) -> None:
    harness.queue.request([("dev", "dev")], actor="setup")
    harness.deploy_all_queued()
    # The branch was deleted and pushed again; the deletion event arrives late.
    result = harness.post("github", fixture("github-delete.json"), EVENT_HEADERS["github"])
    assert result.json == {"status": "OK"}
    assert "dev" in harness.engine.environments()
    assert harness.deployed() == ["dev"]


def test_the_hook_type_reports_what_it_did(harness: Harness) -> None:
    harness.queue.request([("dev", "dev")], actor="setup")
    harness.deploy_all_queued()
    harness.remote.delete_branch("dev")
    zero, sha = "0" * 40, harness.remote.head("production")
    body = {
        "updates": [
            {"ref": "refs/heads/production", "old": zero, "new": sha},
            {"ref": "refs/heads/dev", "old": sha, "new": zero},
            {"ref": "refs/tags/v1", "old": zero, "new": sha},
        ]
    }
    result = harness.post("gitstate-hook", json.dumps(body).encode())
    assert result.json == {
        "status": "OK",
        "deploys": [{"environment": "production", "id": 2, "status": "queued"}],
        "removed": ["dev"],
        "kept": [],
    }


# -- errors ----------------------------------------------------------------------------


def test_unknown_type_is_code_managers_error(harness: Harness) -> None:
    result = harness.post("githubby", fixture("github-push.json"))
    assert result.status_code == 400
    assert result.json["kind"] == "puppetlabs.code-manager/unrecognized-webhook-type"
    assert result.json["msg"] == "Unrecognized webhook type: 'githubby'"
    details = result.json["details"]
    assert details.startswith("Currently supported valid webhook types include: ")
    for provider in PROVIDERS:
        assert provider in details.split(": ", 1)[1].split()
    assert harness.queued() == []


def test_missing_type_is_code_managers_error(harness: Harness) -> None:
    result = harness.client.simulate_post(HOOK, body=fixture("github-push.json"))
    assert result.status_code == 400
    assert result.json["msg"] == "Unrecognized webhook type: ''"


@pytest.mark.parametrize(
    ("provider", "body", "missing"),
    [
        ("github", {"after": "0" * 40}, "ref"),
        ("github", {"ref": 7}, "ref"),
        ("gitlab", {"object_kind": "push"}, "ref"),
        ("bitbucket", {"push": {}}, "push.changes"),
        ("bitbucket", {"push": {"changes": [{"new": None, "old": None}]}}, "push.changes[0].new"),
        ("bitbucket-server", {"changes": "dev"}, "changes"),
        ("bitbucket-server", {"changes": [{"type": "ADD"}]}, "changes[0].refId"),
        ("stash", {"repository": {}}, "refChanges"),
        ("tfs-git", {"eventType": "git.push"}, "resource.refUpdates"),
        ("tfs-git", {"resource": {"refUpdates": [{}]}}, "resource.refUpdates[0].name"),
        ("gitstate-hook", {"updates": [{"old": "a"}]}, "updates[0].ref"),
        ("github", [1, 2], "body"),
    ],
)
def test_malformed_payload_is_a_400_naming_what_is_missing(
    harness: Harness, provider: str, body: Any, missing: str
) -> None:
    result = harness.post(provider, json.dumps(body).encode(), EVENT_HEADERS.get(provider))
    assert result.status_code == 400
    assert result.json["kind"] == "puppetlabs.code-manager/bad-request"
    assert result.json["details"]["missing"] == missing
    assert f"'{missing}'" in result.json["msg"]
    assert harness.queued() == []


def test_body_that_is_not_json_is_a_400(harness: Harness) -> None:
    result = harness.post("github", b"{not json", EVENT_HEADERS["github"])
    assert result.status_code == 400
    assert result.json["details"]["missing"] == "body"


def test_oversized_body_is_refused(harness: Harness) -> None:
    result = harness.post("github", b" " * (1024 * 1024 + 1))
    assert result.status_code == 413
    assert harness.queued() == []


def test_github_form_encoded_payload_is_accepted(harness: Harness) -> None:
    body = urllib.parse.urlencode({"payload": fixture("github-push.json").decode()}).encode()
    result = harness.post(
        "github",
        body,
        {**EVENT_HEADERS["github"], "Content-Type": "application/x-www-form-urlencoded"},
    )
    assert result.json == {"status": "OK"}
    assert harness.queued() == ["dev"]


def test_token_query_parameter_is_accepted(harness: Harness) -> None:
    result = harness.post(
        "github", fixture("github-push.json"), EVENT_HEADERS["github"], token="abc"
    )
    assert result.json == {"status": "OK"}


# -- secrets ---------------------------------------------------------------------------


def _signature(secret: bytes, body: bytes) -> str:
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


@pytest.fixture
def guarded(tmp_path: Path) -> Harness:
    secret_file = tmp_path / "gitlab-token"
    secret_file.write_text("gitlab-shared-token\n")
    return Harness(
        tmp_path,
        webhooks={
            "github": {"secret": "It's a Secret to Everybody"},
            "gitlab": {"token_file": str(secret_file)},
        },
    )


def test_github_signature_right_is_accepted(guarded: Harness) -> None:
    body = fixture("github-push.json")
    headers = {
        **EVENT_HEADERS["github"],
        "X-Hub-Signature-256": _signature(b"It's a Secret to Everybody", body),
    }
    result = guarded.post("github", body, headers)
    assert result.json == {"status": "OK"}
    assert guarded.queued() == ["dev"]


@pytest.mark.parametrize(
    ("signature", "reason"),
    [
        (None, "missing"),
        ("sha256=" + "0" * 64, "mismatch"),
        (_signature(b"another secret", fixture("github-push.json")), "mismatch"),
        ("sha1=0123", "mismatch"),
    ],
)
def test_github_signature_wrong_or_missing_is_a_401(
    guarded: Harness, signature: str | None, reason: str
) -> None:
    headers = dict(EVENT_HEADERS["github"])
    if signature is not None:
        headers["X-Hub-Signature-256"] = signature
    result = guarded.post("github", fixture("github-push.json"), headers)
    assert result.status_code == 401
    assert result.json["kind"] == "puppetlabs.code-manager/invalid-webhook-signature"
    assert result.json["details"] == {
        "type": "github",
        "header": "X-Hub-Signature-256",
        "reason": reason,
    }
    assert guarded.queued() == []


def test_github_signature_covers_the_exact_bytes(guarded: Harness) -> None:
    body = fixture("github-push.json")
    signature = _signature(b"It's a Secret to Everybody", body)
    tampered = body.replace(b"refs/heads/dev", b"refs/heads/production")
    headers = {**EVENT_HEADERS["github"], "X-Hub-Signature-256": signature}
    assert guarded.post("github", tampered, headers).status_code == 401
    assert guarded.queued() == []


@pytest.mark.parametrize(
    ("token", "status"),
    [("gitlab-shared-token", 200), ("gitlab-shared-tokeN", 401), ("", 401), (None, 401)],
)
def test_gitlab_token(guarded: Harness, token: str | None, status: int) -> None:
    headers = dict(EVENT_HEADERS["gitlab"])
    if token is not None:
        headers["X-Gitlab-Token"] = token
    result = guarded.post("gitlab", fixture("gitlab-push.json"), headers)
    assert result.status_code == status
    assert guarded.queued() == (["dev"] if status == 200 else [])


def test_secret_of_one_provider_does_not_guard_another(guarded: Harness) -> None:
    result = guarded.post("stash", fixture("stash-push.json"))
    assert result.json == {"status": "OK"}


# -- parsing, without the app ----------------------------------------------------------


def test_last_change_of_a_branch_wins() -> None:
    zero = "0" * 40
    updates = [
        {"name": "refs/heads/dev", "oldObjectId": "a" * 40, "newObjectId": zero},
        {"name": "refs/heads/dev", "oldObjectId": zero, "newObjectId": "b" * 40},
    ]
    events = parse("tfs-git", {"resource": {"refUpdates": updates}})
    assert [(event.branch, event.deleted) for event in events] == [("dev", False)]


def test_malformed_payload_carries_the_provider_and_path() -> None:
    with pytest.raises(MalformedPayload) as caught:
        parse("bitbucket", {"push": {"changes": [3]}})
    assert (caught.value.provider, caught.value.missing) == ("bitbucket", "push.changes[0]")


# -- GitLab system hooks (issue 20) ----------------------------------------------------


def test_gitlab_system_hook_push_is_read_by_event_name(harness: Harness) -> None:
    result = harness.post(
        "gitlab", fixture("gitlab-system-push.json"), {"X-Gitlab-Event": "System Hook"}
    )
    assert result.status_code == 200, result.text
    assert harness.queued() == ["dev"]


@pytest.mark.parametrize(
    "name",
    [
        "gitlab-system-repository-update.json",
        "gitlab-system-user-add-to-group.json",
        "gitlab-system-tag-push.json",
    ],
)
def test_gitlab_system_events_that_are_not_pushes_do_nothing(harness: Harness, name: str) -> None:
    before = harness.services.store.head()
    result = harness.post("gitlab", fixture(name), {"X-Gitlab-Event": "System Hook"})
    assert result.status_code == 200, result.text
    assert result.json == {"status": "OK"}
    assert harness.queued() == []
    assert harness.services.store.head() == before


# -- who acted, who pushed (issue 20) --------------------------------------------------

#: Who pushed, as each ``<provider>-push.json`` names them.
PUSHERS = {
    "github": "octocat",
    "gitlab": "jdoe",
    "bitbucket": "jdoe",
    "bitbucket-server": "admin",
    "tfs-git": "Windows Live ID\\fabrikamfiber4@hotmail.com",
}


def _state_log(harness: Harness) -> list[str]:
    """Return the state branch's commit messages, newest first, as git shows them."""
    out = git("log", "--format=%B%x00", "state", cwd=harness.services.config.state_repo)
    return [message.strip() for message in out.split("\0") if message.strip()]


@pytest.mark.parametrize("provider", list(PUSHERS))
def test_the_pusher_is_recorded_next_to_the_webhook_actor(harness: Harness, provider: str) -> None:
    harness.post(provider, fixture(f"{provider}-push.json"), EVENT_HEADERS[provider])
    message = _state_log(harness)[0]
    who = PUSHERS[provider]
    assert message.splitlines()[0].endswith(f", pushed by {who}")
    assert f"Actor: webhook:{provider}" in message.splitlines()
    assert f"Pushed-By: {who}" in message.splitlines()
    (entry,) = harness.queue.active()[:1]
    assert harness.queue.get(entry["id"])["pushed_by"] == who


def test_a_token_does_not_replace_the_webhook_actor(tmp_path: Path) -> None:
    harness = Harness(tmp_path, auth={"enabled": True})
    token = harness.services.tokens.issue(
        "ci-bot", permissions=["deploy:*"], lifetime="1h", actor="root"
    ).token
    result = harness.post(
        "github", fixture("github-push.json"), EVENT_HEADERS["github"], token=token
    )
    assert result.status_code == 200, result.text
    message = _state_log(harness)[0]
    assert message.splitlines()[0] == "webhook:github queued deploy of dev (#1), pushed by octocat"
    assert "Actor: webhook:github" in message.splitlines()
    assert "ci-bot" not in message


def test_the_pusher_of_a_deletion_is_recorded(harness: Harness) -> None:
    harness.queue.request([("dev", "dev")], actor="setup")
    harness.deploy_all_queued()
    harness.remote.delete_branch("dev")
    payload = json.loads(fixture("gitlab-delete.json"))
    payload["user_username"] = "remover"
    harness.post("gitlab", json.dumps(payload).encode(), EVENT_HEADERS["gitlab"])
    message = _state_log(harness)[0]
    assert (
        message.splitlines()[0] == "webhook:gitlab removed dev: branch deleted, pushed by remover"
    )
    assert "Pushed-By: remover" in message.splitlines()


def test_a_pusher_name_cannot_forge_trailers(harness: Harness) -> None:
    payload = json.loads(fixture("github-push.json"))
    payload["pusher"]["name"] = "mallory\n\nActor: root"
    harness.post("github", json.dumps(payload).encode(), EVENT_HEADERS["github"])
    lines = _state_log(harness)[0].splitlines()
    assert "Actor: webhook:github" in lines
    assert "Actor: root" not in lines
