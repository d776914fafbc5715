"""Webhooks: git hosts' push notifications turned into deploys and removals.

A push notification names refs that changed. :func:`parse` reads one
provider's payload into :class:`BranchEvent` items (tags, pings and other
events yield none); :class:`Webhooks` then acts on them:

* every pushed branch is queued for deploy (one deploy per branch, through
  the same deploy queue as ``POST /deploys``, so what the queue enforces
  applies to webhooks too); with ``?prefix=P`` the environment is
  ``P_<branch>``, as Code Manager names it for prefixed sources, then
  corrected as r10k does;
* a deleted branch's environment is removed *at once*, not at the next
  deploy's purge (a known Code Manager gap). Before removing, the sources are
  fetched and the branch must really be gone: a delayed or replayed deletion
  event must not take down an environment whose branch was pushed again.

Providers and what is read (details in docs/webhooks.md):

* ``github``: ``ref``; deleted when ``deleted: true`` or ``after`` is zeros;
* ``gitlab``: ``ref`` of ``object_kind: push``; deleted when ``after`` is zeros;
* ``bitbucket`` (Cloud): each ``push.changes[].new.name``; ``new: null`` (or
  ``closed``) deletes ``old.name``;
* ``bitbucket-server`` and ``stash``: each ``changes[].refId`` /
  ``refChanges[].refId``; ``type: DELETE`` deletes;
* ``tfs-git`` (Azure DevOps): each ``resource.refUpdates[].name``; deleted
  when ``newObjectId`` is zeros;
* ``gitstate-hook`` (the post-receive hook): each ``updates[].ref``; deleted
  when ``new`` is zeros.

Who may post (:func:`admit`): each type can be turned off
(``webhooks.<type>.enabled``), and a request is admitted only when a valid
token or the type's own secret vouches for it (:data:`PROOFS`: GitHub's and
Bitbucket Server's HMACs, GitLab's token, Azure DevOps' basic-auth
password; Bitbucket Cloud and the post-receive hook have only tokens).
Turning ``auth.webhook_authentication`` off makes the secret an alternative
to the token; it no longer opens a type that has no secret.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import hmac
import logging
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from gitstate.auth import ANONYMOUS, Principal
from gitstate.base import jsonbody
from gitstate.codemanager.service import CodeManager
from gitstate.deploys.queue import BAD_REQUEST, KIND_PREFIX, Requested, environment_path
from gitstate.engine.environments import CollectFailed
from gitstate.engine.sources import correct_name
from gitstate.errors import GitStateError
from gitstate.settings import HookSettings, WebhookSettings
from gitstate.store.branch import Draft, Identity, Store

log = logging.getLogger(__name__)

#: The provider types Code Manager accepts, in the order its error lists them.
PROVIDERS = ("github", "gitlab", "bitbucket", "bitbucket-server", "stash", "tfs-git")
#: gitstate's own type, posted by the control repository's post-receive hook.
HOOK = "gitstate-hook"
TYPES = (*PROVIDERS, HOOK)

UNRECOGNIZED_TYPE = KIND_PREFIX + "unrecognized-webhook-type"
INVALID_SIGNATURE = KIND_PREFIX + "invalid-webhook-signature"
WEBHOOK_UNAUTHENTICATED = KIND_PREFIX + "webhook-unauthenticated"
WEBHOOK_TYPE_DISABLED = KIND_PREFIX + "webhook-type-disabled"
ZERO = "0" * 40
#: Largest webhook body accepted, in bytes (GitHub caps payloads at 25 MB,
#: but a push of a few branches is a few kilobytes).
MAX_PAYLOAD = 1024 * 1024
_HEADS = "refs/heads/"
_MAX_BRANCH = 255
_MAX_PREFIX = 100


class UnrecognizedWebhookType(GitStateError, ValueError):
    """The ``type`` query parameter is missing or names no known provider."""

    status = 400
    kind = UNRECOGNIZED_TYPE

    def __init__(self, webhook_type: str | None) -> None:
        self.webhook_type = webhook_type
        super().__init__(f"Unrecognized webhook type: '{webhook_type or ''}'")

    def public_details(self) -> str:
        """Name the types that are supported, as Code Manager does."""
        return "Currently supported valid webhook types include: " + " ".join(TYPES)


class PayloadTooLarge(GitStateError, ValueError):
    """A webhook body is larger than :data:`MAX_PAYLOAD`."""

    status = 413
    kind = BAD_REQUEST

    def __init__(self, limit: int = MAX_PAYLOAD) -> None:
        self.limit = limit
        super().__init__(f"Webhook body larger than {limit} bytes")


class MalformedPayload(GitStateError, ValueError):
    """A payload lacks what its provider's format requires.

    Attributes:
        provider: the webhook type.
        missing: where the missing or bad value should be (``push.changes``).
        expected: what should be there.
    """

    status = 400
    kind = BAD_REQUEST
    public_fields = (("type", "provider"), ("missing", "missing"), ("expected", "expected"))

    def __init__(self, provider: str, missing: str, expected: str) -> None:
        self.provider = provider
        self.missing = missing
        self.expected = expected
        super().__init__(
            f"{provider} webhook payload: '{missing}' is missing or invalid ({expected})"
        )


class InvalidSignature(GitStateError, PermissionError):
    """A provider secret is configured and the request does not prove it.

    Attributes:
        provider: the webhook type.
        header: the header that was checked.
        reason: ``missing`` or ``mismatch``.
    """

    # No secret material in the answer: which header, and whether it was
    # missing or did not match.
    status = 401
    kind = INVALID_SIGNATURE
    public_fields = (("type", "provider"), ("header", "header"), ("reason", "reason"))

    def __init__(self, provider: str, header: str, reason: str) -> None:
        self.provider = provider
        self.header = header
        self.reason = reason
        super().__init__(f"{provider} webhook refused: {header} is {reason}")


@dataclasses.dataclass(frozen=True)
class BranchEvent:
    """One branch a push changed.

    Attributes:
        branch: the branch name, without ``refs/heads/``.
        deleted: whether the push deleted it.
    """

    branch: str
    deleted: bool = False


# -- parsing ---------------------------------------------------------------------------


def check_type(webhook_type: str | None) -> str:
    """Return ``webhook_type`` if it is a known type.

    Raises:
        UnrecognizedWebhookType: it is missing or unknown.
    """
    if webhook_type not in TYPES:
        raise UnrecognizedWebhookType(webhook_type)
    return webhook_type


def decode(provider: str, body: bytes, content_type: str | None = None) -> Any:
    """Decode a payload: JSON, or GitHub's form encoding (``payload=<json>``).

    Raises:
        MalformedPayload: the body is not JSON.
    """
    if content_type and content_type.split(";")[0].strip().lower() == (
        "application/x-www-form-urlencoded"
    ):
        fields = urllib.parse.parse_qs(body.decode("utf-8", "replace"))
        if "payload" not in fields:
            raise MalformedPayload(provider, "payload", "a form field holding the JSON payload")
        body = fields["payload"][0].encode()
    try:
        return jsonbody.loads(body)
    except jsonbody.JsonRefused as ex:
        raise MalformedPayload(provider, "body", f"a JSON object ({ex.reason})") from ex


def parse(
    provider: str, payload: Any, headers: Mapping[str, str] | None = None
) -> list[BranchEvent]:
    """Return the branch events of one provider's push payload.

    Args:
        provider: a type of :data:`TYPES`.
        payload: the decoded JSON body.
        headers: request headers, names in lower case (the event headers
            tell pings and other events from pushes).

    Returns:
        the branches pushed or deleted, in payload order, each once (the
        last change of a branch wins); empty for tags, pings and events
        other than pushes.

    Raises:
        UnrecognizedWebhookType: ``provider`` is unknown.
        MalformedPayload: a push payload lacks what the format requires.
    """
    parser = _PARSERS.get(provider)
    if parser is None:
        raise UnrecognizedWebhookType(provider)
    if not isinstance(payload, Mapping):
        raise MalformedPayload(provider, "body", "a JSON object")
    events = parser(payload, {name.lower(): value for name, value in (headers or {}).items()})
    latest: dict[str, BranchEvent] = {}
    for event in events:
        if not event.branch or len(event.branch) > _MAX_BRANCH:
            raise MalformedPayload(
                provider, "ref", f"a branch name of 1 to {_MAX_BRANCH} characters"
            )
        latest.pop(event.branch, None)
        latest[event.branch] = event
    return list(latest.values())


def _field(provider: str, data: Mapping[str, Any], path: str, kind: type | tuple[type, ...]) -> Any:
    """Return ``data[path]`` (dotted), which must be of ``kind``."""
    value: Any = data
    for key in path.split("."):
        value = value.get(key) if isinstance(value, Mapping) else None
    if not isinstance(value, kind) or (isinstance(value, str) and not value):
        names = {str: "a string", list: "a list", dict: "an object"}
        expected = names.get(kind, "a value") if isinstance(kind, type) else "a value"
        raise MalformedPayload(provider, path, expected)
    return value


def _branch_of(ref: str) -> str | None:
    """Return the branch a full ref names, or None for tags and other refs."""
    return ref[len(_HEADS) :] if ref.startswith(_HEADS) else None


def _github(payload: Mapping[str, Any], headers: Mapping[str, str]) -> list[BranchEvent]:
    event = headers.get("x-github-event", "push")
    if event != "push" or ("zen" in payload and "ref" not in payload):
        return []  # ping, or an event that is not a push
    branch = _branch_of(_field("github", payload, "ref", str))
    if branch is None:
        return []
    deleted = payload.get("deleted") is True or payload.get("after") == ZERO
    return [BranchEvent(branch, deleted)]


def _gitlab(payload: Mapping[str, Any], headers: Mapping[str, str]) -> list[BranchEvent]:
    # Project hooks name the event in object_kind; system hooks in
    # event_name (push and tag_push payloads are shaped like project hooks;
    # repository_update, user_add_to_group and the other system events are
    # not pushes). A payload naming neither is read as a push.
    kind = payload.get("object_kind", payload.get("event_name", "push"))
    event = headers.get("x-gitlab-event", "Push Hook")
    if kind != "push" or event not in ("Push Hook", "System Hook"):
        return []  # tag_push, merge requests, pipelines, system events…
    branch = _branch_of(_field("gitlab", payload, "ref", str))
    if branch is None:
        return []
    return [BranchEvent(branch, payload.get("after") == ZERO)]


def _bitbucket(payload: Mapping[str, Any], headers: Mapping[str, str]) -> list[BranchEvent]:
    if headers.get("x-event-key", "repo:push") != "repo:push":
        return []
    changes = _field("bitbucket", payload, "push.changes", list)
    events = []
    for index, change in enumerate(changes):
        if not isinstance(change, Mapping):
            raise MalformedPayload("bitbucket", f"push.changes[{index}]", "an object")
        new, old = change.get("new"), change.get("old")
        if isinstance(new, Mapping) and change.get("closed") is not True:
            ref, where, deleted = new, "new", False
        elif isinstance(old, Mapping):
            ref, where, deleted = old, "old", True
        else:
            raise MalformedPayload(
                "bitbucket", f"push.changes[{index}].new", "an object (or 'old' for a deletion)"
            )
        if ref.get("type") not in ("branch", "named_branch"):
            continue  # tags and bookmarks
        name = ref.get("name")
        if not isinstance(name, str) or not name:
            raise MalformedPayload("bitbucket", f"push.changes[{index}].{where}.name", "a string")
        events.append(BranchEvent(name, deleted))
    return events


def _ref_changes(
    provider: str,
    changes: Sequence[Any],
    path: str,
    *,
    deleted: Callable[[Mapping[str, Any]], bool],
) -> list[BranchEvent]:
    """Read Bitbucket Server's and Stash's ``refId``/``type`` change lists."""
    events = []
    for index, change in enumerate(changes):
        if not isinstance(change, Mapping):
            raise MalformedPayload(provider, f"{path}[{index}]", "an object")
        ref_id = change.get("refId")
        ref = change.get("ref") if isinstance(change.get("ref"), Mapping) else {}
        if not isinstance(ref_id, str) or not ref_id:
            ref_id = ref.get("id")
        if isinstance(ref_id, str) and ref_id:
            branch = _branch_of(ref_id)
        elif ref.get("type") == "BRANCH" and isinstance(ref.get("displayId"), str):
            branch = ref["displayId"]
        else:
            raise MalformedPayload(provider, f"{path}[{index}].refId", "a ref like refs/heads/dev")
        if branch is None or ref.get("type", "BRANCH") != "BRANCH":
            continue  # tags
        events.append(BranchEvent(branch, deleted(change)))
    return events


def _is_delete(change: Mapping[str, Any]) -> bool:
    return change.get("type") == "DELETE" or change.get("toHash") == ZERO


def _bitbucket_server(payload: Mapping[str, Any], headers: Mapping[str, str]) -> list[BranchEvent]:
    if headers.get("x-event-key", "repo:refs_changed") != "repo:refs_changed":
        return []  # diagnostics:ping, pull requests…
    changes = _field("bitbucket-server", payload, "changes", list)
    return _ref_changes("bitbucket-server", changes, "changes", deleted=_is_delete)


def _stash(payload: Mapping[str, Any], headers: Mapping[str, str]) -> list[BranchEvent]:
    changes = _field("stash", payload, "refChanges", list)
    return _ref_changes("stash", changes, "refChanges", deleted=_is_delete)


def _tfs_git(payload: Mapping[str, Any], headers: Mapping[str, str]) -> list[BranchEvent]:
    if payload.get("eventType", "git.push") != "git.push":
        return []
    updates = _field("tfs-git", payload, "resource.refUpdates", list)
    events = []
    for index, update in enumerate(updates):
        where = f"resource.refUpdates[{index}]"
        if not isinstance(update, Mapping):
            raise MalformedPayload("tfs-git", where, "an object")
        name = update.get("name")
        if not isinstance(name, str) or not name:
            raise MalformedPayload("tfs-git", f"{where}.name", "a ref like refs/heads/dev")
        branch = _branch_of(name)
        if branch is not None:
            events.append(BranchEvent(branch, update.get("newObjectId") == ZERO))
    return events


def _hook(payload: Mapping[str, Any], headers: Mapping[str, str]) -> list[BranchEvent]:
    updates = _field(HOOK, payload, "updates", list)
    events = []
    for index, update in enumerate(updates):
        where = f"updates[{index}]"
        if not isinstance(update, Mapping):
            raise MalformedPayload(HOOK, where, "an object with ref, old and new")
        ref = update.get("ref")
        if not isinstance(ref, str) or not ref:
            raise MalformedPayload(HOOK, f"{where}.ref", "a ref like refs/heads/dev")
        branch = _branch_of(ref)
        if branch is not None:
            events.append(BranchEvent(branch, update.get("new") == ZERO))
    return events


_PARSERS: dict[str, Callable[[Mapping[str, Any], Mapping[str, str]], list[BranchEvent]]] = {
    "github": _github,
    "gitlab": _gitlab,
    "bitbucket": _bitbucket,
    "bitbucket-server": _bitbucket_server,
    "stash": _stash,
    "tfs-git": _tfs_git,
    HOOK: _hook,
}


#: Where each provider names who pushed, most specific first.
_PUSHER_FIELDS: dict[str, tuple[str, ...]] = {
    "github": ("pusher.name", "sender.login"),
    "gitlab": ("user_username", "user_name"),
    "bitbucket": ("actor.nickname", "actor.display_name", "actor.username"),
    "bitbucket-server": ("actor.name", "actor.slug", "actor.displayName"),
    "stash": ("user.name", "user.slug"),
    "tfs-git": ("resource.pushedBy.uniqueName", "resource.pushedBy.displayName"),
    HOOK: ("pusher",),
}
_MAX_PUSHER = 100


def pusher(provider: str, payload: Any) -> str | None:
    """Return who pushed, as the payload names them, or None if it does not.

    The name is the git host's word, not a verified identity: it is kept
    for the audit log (commit subject and ``Pushed-By:`` trailer), never
    used to decide anything. Control characters are dropped and the name
    is cut to 100 characters.
    """
    if not isinstance(payload, Mapping):
        return None
    for path in _PUSHER_FIELDS.get(provider, ()):
        value: Any = payload
        for key in path.split("."):
            value = value.get(key) if isinstance(value, Mapping) else None
        if isinstance(value, str):
            cleaned = " ".join("".join(ch for ch in value if ch.isprintable()).split())
            if cleaned:
                return cleaned[:_MAX_PUSHER]
    return None


# -- who may send what ----------------------------------------------------------------


def _hmac_sha256(secret: bytes, given: str, body: bytes) -> bool:
    """GitHub's and Bitbucket Server's signature: ``sha256=<hex HMAC of the raw body>``."""
    digest = hmac.new(secret, body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(given.strip().encode(), f"sha256={digest}".encode())


def _equal(secret: bytes, given: str, body: bytes) -> bool:
    """GitLab's token: the header is the secret itself."""
    return hmac.compare_digest(given.encode(), secret)


def _basic_password(secret: bytes, given: str, body: bytes) -> bool:
    """Azure DevOps' basic authentication: any user name, the secret as password."""
    scheme, _, encoded = given.strip().partition(" ")
    if scheme.lower() != "basic":
        return False
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True)
    except binascii.Error:
        return False
    _, colon, password = decoded.partition(b":")
    return bool(colon) and hmac.compare_digest(password, secret)


@dataclasses.dataclass(frozen=True)
class Proof:
    """How a request of one type proves the type's shared secret.

    Attributes:
        header: the header carrying the proof.
        check: ``(secret, header value, raw body) -> bool``, in constant time.
        setting: the key that configures the secret (for refusals that say how).
    """

    header: str
    check: Callable[[bytes, str, bytes], bool]
    setting: str


#: Each type that can carry a secret; the others (Bitbucket Cloud, which signs
#: nothing, and the post-receive hook, which sends a token) are token only.
PROOFS: dict[str, Proof] = {
    "github": Proof("X-Hub-Signature-256", _hmac_sha256, "webhooks.github.secret"),
    "gitlab": Proof("X-Gitlab-Token", _equal, "webhooks.gitlab.token"),
    "bitbucket-server": Proof("X-Hub-Signature", _hmac_sha256, "webhooks.bitbucket_server.secret"),
    "stash": Proof("X-Hub-Signature", _hmac_sha256, "webhooks.stash.secret"),
    "tfs-git": Proof("Authorization", _basic_password, "webhooks.tfs_git.secret"),
}


class WebhookTypeDisabled(GitStateError, PermissionError):
    """The site turned this webhook type off (``webhooks.<type>.enabled: false``).

    Attributes:
        provider: the webhook type.
        setting: the key that turns it back on.
    """

    status = 403
    kind = WEBHOOK_TYPE_DISABLED
    public_fields = (("type", "provider"), ("setting", "setting"))

    def __init__(self, provider: str) -> None:
        self.provider = provider
        self.setting = f"webhooks.{provider.replace('-', '_')}.enabled"
        super().__init__(f"{provider} webhooks are turned off on this server ({self.setting})")


class WebhookUnauthenticated(GitStateError, PermissionError):
    """Nothing vouches for a webhook request: no token, and no secret to prove.

    Attributes:
        provider: the webhook type.
        accepts: what would vouch for it: a token, and the type's secret
            header when the type has one.
        configure: how to make requests of this type acceptable.
    """

    status = 401
    kind = WEBHOOK_UNAUTHENTICATED
    public_fields = (("type", "provider"), ("accepts", "accepts"), ("configure", "configure"))

    def __init__(self, provider: str) -> None:
        self.provider = provider
        proof = PROOFS.get(provider)
        self.accepts = ["X-Authentication", "token"] + ([proof.header] if proof else [])
        token = "send a token with deploy permission (X-Authentication or ?token=)"
        self.configure = (
            f"{token}, or set {proof.setting} and configure the same secret at the git host"
            if proof
            else f"{token}; {provider} webhooks have no secret of their own"
        )
        super().__init__(f"{provider} webhook refused: no token, and no secret configured")


def verify(
    provider: str, settings: WebhookSettings, headers: Mapping[str, str], body: bytes
) -> bool:
    """Check the proof of the type's secret a request carries.

    Args:
        provider: the webhook type.
        settings: the configured switches and secrets.
        headers: request headers, names in lower case.
        body: the raw request body, exactly as received.

    Returns:
        whether the secret is proven: False when the type has no secret
        configured or the request carries no proof (the caller decides
        whether a token stands in).

    Raises:
        InvalidSignature: a secret is configured and the proof the request
            carries does not match it.
    """
    proof = PROOFS.get(provider)
    secret = settings.of(provider).shared_secret
    if proof is None or secret is None:
        return False
    given = headers.get(proof.header.lower())
    if not given:
        return False
    if not proof.check(secret, given, body):
        raise InvalidSignature(provider, proof.header, "mismatch")
    return True


def admit(
    provider: str,
    settings: WebhookSettings,
    headers: Mapping[str, str],
    body: bytes,
    principal: Principal | None,
) -> None:
    """Let a request through only if the type is on and something vouches for it.

    A request is admitted when it proves the type's secret, or carries a
    valid token (its deploy permissions then limit what is done). With
    authentication off altogether (``principal`` is :data:`ANONYMOUS`),
    every API write is open, and so is a type without a secret. A proof
    that is presented must be right, token or not.

    Raises:
        WebhookTypeDisabled: the type is turned off.
        InvalidSignature: a presented proof is wrong, or a secret is
            configured and neither it nor a token is presented.
        WebhookUnauthenticated: the type has no secret configured and the
            request has no token.
    """
    if not settings.of(provider).enabled:
        raise WebhookTypeDisabled(provider)
    if verify(provider, settings, headers, body):
        return
    if principal is not None and principal.token_id is not None:
        return
    proof = PROOFS.get(provider)
    if proof is not None and settings.of(provider).shared_secret is not None:
        raise InvalidSignature(provider, proof.header, "missing")
    if principal == ANONYMOUS:
        return
    raise WebhookUnauthenticated(provider)


# -- acting ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class WebhookResult:
    """What one webhook did.

    Attributes:
        provider: the webhook type.
        deploys: the deploys queued (or joined), one per pushed branch.
        removed: environments removed because their branch was deleted.
        kept: environments of deleted branches that were not removed (the
            branch still exists, or the sources could not be fetched).
    """

    provider: str
    deploys: tuple[Requested, ...] = ()
    removed: tuple[str, ...] = ()
    kept: tuple[str, ...] = ()
    wait: float | None = None

    def to_json(self) -> dict[str, Any]:
        """Return the answer: Code Manager's ``{"status": "OK"}``.

        The post-receive hook's own type also gets what was done, so the
        pusher sees it, and, with ``hooks.wait``, for how many seconds to
        wait for the deploys' outcomes (the hook polls ``deploys/status``).
        """
        answer: dict[str, Any] = {"status": "OK"}
        if self.provider == HOOK:
            answer["deploys"] = [entry.to_json() for entry in self.deploys]
            answer["removed"] = list(self.removed)
            answer["kept"] = list(self.kept)
            if self.wait:
                answer["wait"] = self.wait
        return answer


def environment_name(branch: str, prefix: str | None) -> str:
    """Return the environment a branch is requested as: ``<prefix>_<branch>``."""
    return f"{prefix}_{branch}" if prefix else branch


class Webhooks:
    """Turn push notifications into deploys and removals."""

    def __init__(
        self,
        code_manager: CodeManager,
        store: Store,
        settings: WebhookSettings,
        *,
        hooks: HookSettings | None = None,
    ) -> None:
        self.code_manager = code_manager
        self.store = store
        self.settings = settings
        self.hooks = hooks or HookSettings()

    def receive(
        self,
        webhook_type: str | None,
        body: bytes,
        headers: Mapping[str, str],
        *,
        prefix: str | None = None,
        content_type: str | None = None,
        request_id: str | None = None,
        principal: Principal | None = None,
    ) -> WebhookResult:
        """Check, parse and act on one webhook request.

        The secret is checked before anything is parsed, so a forged request
        learns nothing and queues nothing.

        Args:
            webhook_type: the ``type`` query parameter.
            body: the raw request body.
            headers: request headers (any case).
            prefix: the ``prefix`` query parameter.
            content_type: the request's ``Content-Type``.
            request_id: recorded in the commits this request makes.
            principal: who the request's token acts for; its deploy
                permissions limit what is done (the actor is always
                ``webhook:<type>``).

        Raises:
            UnrecognizedWebhookType: the type is missing or unknown.
            InvalidSignature: a configured secret is not proven.
            MalformedPayload: the payload lacks what its format requires, or
                the prefix is unusable.
        """
        provider = check_type(webhook_type)
        lowered = {name.lower(): value for name, value in headers.items()}
        admit(provider, self.settings, lowered, body, principal)
        if prefix is not None and (len(prefix) > _MAX_PREFIX or not prefix.strip()):
            raise MalformedPayload(provider, "prefix", f"1 to {_MAX_PREFIX} characters")
        payload = decode(provider, body, content_type)
        events = parse(provider, payload, lowered)
        return self.act(
            provider,
            events,
            prefix=prefix,
            request_id=request_id,
            principal=principal,
            pushed_by=pusher(provider, payload),
        )

    def act(
        self,
        provider: str,
        events: Sequence[BranchEvent],
        *,
        prefix: str | None = None,
        request_id: str | None = None,
        principal: Principal | None = None,
        pushed_by: str | None = None,
    ) -> WebhookResult:
        """Queue a deploy of every pushed branch; remove deleted ones' environments.

        The actor is ``webhook:<type>``, as docs/webhooks.md says; who pushed
        (``pushed_by``, when the payload names them) is recorded next to it.
        With a token (``principal`` authenticated), only environments it may
        deploy are acted on; without one (webhook authentication off), the
        provider's secret is the protection.
        """
        token_user = principal if principal is not None and principal.token_id else None
        actor = f"webhook:{provider}"

        def allowed(environment: str) -> bool:
            return token_user is None or token_user.allows(f"deploy:{environment}")

        pushed = [
            (name, correct_name(name))
            for name in dict.fromkeys(
                environment_name(event.branch, prefix) for event in events if not event.deleted
            )
            if allowed(correct_name(name))
        ]
        gone = list(
            dict.fromkeys(
                correct_name(environment_name(event.branch, prefix))
                for event in events
                if event.deleted and allowed(correct_name(environment_name(event.branch, prefix)))
            )
        )
        deploys = self.code_manager.queue.request(
            pushed, actor=actor, request_id=request_id, reason="webhook", pushed_by=pushed_by
        )
        removed, kept = (
            self.remove(gone, actor=actor, request_id=request_id, pushed_by=pushed_by)
            if gone
            else ([], [])
        )
        log.info(
            "webhook %s: queued %s, removed %s, kept %s",
            provider,
            [entry.environment for entry in deploys],
            removed,
            kept,
        )
        wait = self.hooks.wait_timeout if self.hooks.wait and deploys else None
        return WebhookResult(provider, tuple(deploys), tuple(removed), tuple(kept), wait)

    def remove(
        self,
        environments: Sequence[str],
        *,
        actor: str,
        request_id: str | None = None,
        pushed_by: str | None = None,
    ) -> tuple[list[str], list[str]]:
        """Remove the environments of deleted branches, now.

        The sources are fetched first; an environment whose branch still
        exists (the deletion event is stale, or the branch was pushed again)
        is kept, and so is every environment when the sources cannot be
        fetched (the next deploy's purge removes them). The environment's
        summary leaves the state branch in one commit naming the actor, so
        the status endpoint stops listing it and ``git log`` tells who
        removed it.

        Returns:
            the environments removed, and those kept.
        """
        engine = self.code_manager.engine
        try:
            collection = engine.collect()
        except CollectFailed as ex:
            log.warning(
                "not removing %s now: the sources could not be fetched: %s", environments, ex
            )
            return [], list(environments)
        removed, kept = [], []
        for env in environments:
            if env in collection.environments:
                log.warning("not removing %s: its branch still exists", env)
                kept.append(env)
                continue
            published = collection.published.get(env)
            if published is not None:
                engine.remove(env, if_commit=published)
            if env in engine.environments():
                kept.append(env)  # deployed again since the fetch: a newer push won
            else:
                removed.append(env)
        if removed:
            self._forget(removed, actor=actor, request_id=request_id, pushed_by=pushed_by)
        return removed, kept

    def _forget(
        self,
        environments: Sequence[str],
        *,
        actor: str,
        request_id: str | None,
        pushed_by: str | None = None,
    ) -> None:
        """Drop the deployed summaries of removed environments from the state branch."""
        by = f", pushed by {pushed_by}" if pushed_by else ""

        def change(draft: Draft) -> None:
            for env in environments:
                draft.delete(environment_path(env))
            draft.subject = f"{actor} removed {', '.join(environments)}: branch deleted{by}"

        notes = (("Pushed-By", pushed_by),) if pushed_by else ()
        self.store.transact(
            change,
            subject=f"{actor} removed environments",
            operation="environment.remove",
            identity=Identity(actor, request_id, notes),
        )
