"""Every service error maps to an HTTP answer of the right status and shape.

The error map is ``gitstate.web.errors``: each ``GitStateError`` declares a
status and a Code Manager kind, and the answer's body takes the shape of the
API family the request belongs to. These tests find every subclass in the
installed package, raise each from a route in gatekeeper's family and from
one in Code Manager's, and check what comes back against the error schemas
of the OpenAPI document.
"""

from __future__ import annotations

import importlib
import inspect
import logging
import pkgutil
import re
import types
from pathlib import Path
from typing import Any

import falcon
import falcon.testing
import jsonschema
import pytest

import gitstate
from gitstate.auth import AuthError, PermissionDenied
from gitstate.codemanager.service import CollectError
from gitstate.codemanager.webhooks import (
    InvalidSignature,
    MalformedPayload,
    PayloadTooLarge,
    UnrecognizedWebhookType,
)
from gitstate.config import Config
from gitstate.deploys.guard import GateClosed
from gitstate.deploys.queue import DeployNotFound, DeployRequestError
from gitstate.errors import GitStateError, kind_of, status_of
from gitstate.filesync.rollback import RollbackTargetNotFound
from gitstate.filesync.server import RequestTooLarge, ServiceRefused, Unauthorized
from gitstate.gates.service import InvalidName, StateMoved
from gitstate.store.branch import StoreBusy
from gitstate.store.codec import RecordError
from gitstate.web import errors as web_errors
from gitstate.web.app import create_app
from gitstate.web.openapi import build
from tests.support.client import Client

GATEKEEPER = "/api/test-raise"
CODE_MANAGER = "/code-manager/v1/test-raise"
FILE_SYNC = "/file-sync/v1/test-raise"
WEB_DIR = Path(web_errors.__file__).parent


def _all_modules() -> list[str]:
    """Import every module of the installed package; return their names."""
    names = []
    roots = [gitstate]
    for extra in ("gitstate.web", "gitstate.hooks"):
        roots.append(importlib.import_module(extra))
    for root in roots:
        for info in pkgutil.walk_packages(root.__path__, root.__name__ + "."):
            if info.name.endswith("__main__"):
                continue  # running it is what importing it does
            importlib.import_module(info.name)
            names.append(info.name)
    return names


def _subclasses(cls: type) -> list[type]:
    found: list[type] = []
    for sub in cls.__subclasses__():
        found.append(sub)
        found.extend(_subclasses(sub))
    return found


_all_modules()
ERRORS = sorted(
    {
        cls
        for cls in [GitStateError, *_subclasses(GitStateError)]
        if cls.__module__.startswith("gitstate")
    },
    key=lambda cls: f"{cls.__module__}.{cls.__qualname__}",
)


def _dummy(annotation: str) -> Any:
    """A value fitting a (string) annotation, good enough to build an error."""
    if annotation.startswith("tuple") or annotation.startswith("Sequence"):
        return ("abc1234",)
    if annotation.startswith("list"):
        return ["abc1234"]
    if annotation.startswith("int"):
        return 3
    if annotation.startswith("float"):
        return 1.5
    if "Path" in annotation:
        return Path("/nowhere/x")
    if "Exception" in annotation:
        return RuntimeError("cause")
    if annotation.startswith(("str", "Any")):
        return "abc1234"
    return _Anything()


class _Anything:
    """Stands for a value of a type the test does not know: any attribute is text."""

    def __getattr__(self, name: str) -> str:
        return "abc1234"

    def __str__(self) -> str:
        return "abc1234"


def make(cls: type[GitStateError]) -> GitStateError:
    """Build an instance of ``cls`` from its constructor's annotations."""
    if cls.__init__ is BaseException.__init__ or cls.__init__ is Exception.__init__:
        return cls("something went wrong")
    params = list(inspect.signature(cls.__init__).parameters.values())[1:]
    args = []
    kwargs = {}
    for param in params:
        if param.kind is param.VAR_POSITIONAL:
            args.append("something went wrong")
        elif param.kind is param.VAR_KEYWORD or param.default is not param.empty:
            continue
        elif param.kind is param.KEYWORD_ONLY:
            kwargs[param.name] = _dummy(str(param.annotation))
        else:
            args.append(_dummy(str(param.annotation)))
    return cls(*args, **kwargs)


class Raiser:
    """Raises whatever error the test put in ``error``."""

    auth_policy = "public"

    def __init__(self) -> None:
        self.error: BaseException = RuntimeError("unset")

    async def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        raise self.error


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> types.SimpleNamespace:
    datadir = tmp_path_factory.mktemp("errors") / "data"
    config = Config.from_mapping({"datadir": str(datadir), "state": {"fsync": False}})
    application = create_app(config)
    raiser = Raiser()
    for path in (GATEKEEPER, CODE_MANAGER, FILE_SYNC):
        application.add_route(path, raiser)
    return types.SimpleNamespace(client=Client(application), raiser=raiser)


SCHEMAS = build()["components"]["schemas"]


def _check(schema: str, body: Any) -> None:
    jsonschema.Draft202012Validator(SCHEMAS[schema]).validate(body)


def answer(app: types.SimpleNamespace, error: BaseException, path: str, **kw: Any) -> Any:
    app.raiser.error = error
    return app.client.simulate_get(path, **kw)


def test_the_walk_finds_the_errors_of_every_layer() -> None:
    names = {cls.__name__ for cls in ERRORS}
    # One of each layer at least, so a walk that imports too little fails here.
    assert {
        "GitStateError",
        "StoreBusy",
        "RecordError",
        "GateNotFound",
        "PermissionDenied",
        "DeployNotFound",
        "GateClosed",
        "RollbackTargetNotFound",
        "CollectError",
        "InvalidSignature",
        "MaintenanceError",
    } <= names
    assert len(ERRORS) > 50


@pytest.mark.parametrize("cls", ERRORS, ids=lambda cls: cls.__qualname__)
def test_every_error_has_a_status_and_a_kind(cls: type[GitStateError]) -> None:
    error = make(cls)
    assert 400 <= status_of(error) <= 599
    assert re.fullmatch(r"puppetlabs\.(code-manager|rbac)/[a-z-]+", kind_of(error))


@pytest.mark.parametrize("cls", ERRORS, ids=lambda cls: cls.__qualname__)
def test_gatekeeper_family_answers_status_and_reason(
    app: types.SimpleNamespace, cls: type[GitStateError]
) -> None:
    error = make(cls)
    result = answer(app, error, GATEKEEPER)
    assert result.status_code == status_of(error)
    assert result.headers["content-type"].startswith("application/json")
    body = result.json
    if isinstance(error, AuthError):
        _check("AuthError", body)
    elif isinstance(error, StateMoved):
        _check("StateMoved", body)
    else:
        _check("GateError", body)
    assert body["status"] == "error"
    if status_of(error) == 500:
        assert body == {"status": "error", "reason": web_errors.INTERNAL}
    else:
        assert body["reason"] == error.public_message()


@pytest.mark.parametrize("path", [CODE_MANAGER, FILE_SYNC])
@pytest.mark.parametrize("cls", ERRORS, ids=lambda cls: cls.__qualname__)
def test_code_manager_family_answers_kind_and_msg(
    app: types.SimpleNamespace, cls: type[GitStateError], path: str
) -> None:
    error = make(cls)
    status = status_of(error)
    result = answer(app, error, path)
    assert result.status_code == status
    assert result.headers["content-type"].startswith("application/json")
    body = result.json
    if isinstance(error, AuthError):
        _check("AuthError", body)
    elif status in (500, 503):
        # 503s are gatekeeper's shape everywhere (the OpenAPI document's
        # "_UNAVAILABLE"); a 500 says nothing in either family.
        _check("GateError", body)
    else:
        _check("CodeManagerError", body)
        assert set(body) <= {"kind", "msg", "details"}
        assert body["kind"] == kind_of(error)
        assert body["msg"] == error.public_message()
        assert body.get("details") == error.public_details()


DENIED = "alice is not allowed to roll back 'production' (needs permission 'deploy:production')"

# What the resources built by hand before the map existed, answered the same.
EXACT = [
    (
        CODE_MANAGER,
        DeployNotFound(7),
        404,
        {
            "kind": "puppetlabs.code-manager/not-found",
            "msg": "no deploy with id 7",
            "details": {"id": 7},
        },
    ),
    (
        CODE_MANAGER,
        DeployRequestError("id must be a deploy number, not 'x'"),
        400,
        {
            "kind": "puppetlabs.code-manager/bad-request",
            "msg": "id must be a deploy number, not 'x'",
        },
    ),
    (
        CODE_MANAGER,
        CollectError("source a: fetch failed"),
        502,
        {
            "kind": "puppetlabs.code-manager/collect-failed",
            "msg": "Errors while collecting a list of environments to deploy (exit code: 1)",
            "details": "source a: fetch failed",
        },
    ),
    (
        CODE_MANAGER,
        PayloadTooLarge(1024 * 1024),
        413,
        {
            "kind": "puppetlabs.code-manager/bad-request",
            "msg": "Webhook body larger than 1048576 bytes",
        },
    ),
    (
        CODE_MANAGER,
        MalformedPayload("github", "ref", "a branch"),
        400,
        {
            "kind": "puppetlabs.code-manager/bad-request",
            "msg": "github webhook payload: 'ref' is missing or invalid (a branch)",
            "details": {"type": "github", "missing": "ref", "expected": "a branch"},
        },
    ),
    (
        CODE_MANAGER,
        InvalidSignature("github", "X-Hub-Signature-256", "mismatch"),
        401,
        {
            "kind": "puppetlabs.code-manager/invalid-webhook-signature",
            "msg": "github webhook refused: X-Hub-Signature-256 is mismatch",
            "details": {"type": "github", "header": "X-Hub-Signature-256", "reason": "mismatch"},
        },
    ),
    (
        CODE_MANAGER,
        GateClosed("production", "code/main/production", "closed by hand"),
        409,
        {
            "kind": "puppetlabs.code-manager/gate-closed",
            "msg": (
                "gate code/main/production is closed (closed by hand); production is not deployed"
            ),
            "details": {"gate": "code/main/production", "reason": "closed by hand"},
        },
    ),
    (
        CODE_MANAGER,
        RollbackTargetNotFound("production", None, "production is not deployed"),
        404,
        {
            "kind": "puppetlabs.code-manager/not-found",
            "msg": "production is not deployed",
            "details": {"environment": "production", "to": None},
        },
    ),
    (
        FILE_SYNC,
        ServiceRefused("git-receive-pack"),
        403,
        {
            "kind": "puppetlabs.code-manager/forbidden",
            "msg": "git-receive-pack is not offered: file-sync storage is read-only",
        },
    ),
    (
        FILE_SYNC,
        RequestTooLarge(100),
        413,
        {
            "kind": "puppetlabs.code-manager/bad-request",
            "msg": "request body larger than 100 bytes",
        },
    ),
    (
        CODE_MANAGER,
        PermissionDenied("alice", "deploy:production", "roll back 'production'"),
        403,
        {
            "status": "error",
            "reason": DENIED,
            "kind": "puppetlabs.rbac/permission-denied",
            "msg": DENIED,
        },
    ),
    (
        GATEKEEPER,
        StateMoved(("abc",), "def"),
        412,
        {
            "status": "error",
            "reason": "the state is at def, not at abc; read it again and retry",
            "commit": "def",
        },
    ),
    (
        CODE_MANAGER,
        RecordError("gates/a/b.yaml", "not YAML"),
        503,
        {"status": "error", "reason": "record gates/a/b.yaml: not YAML", "path": "gates/a/b.yaml"},
    ),
    (
        GATEKEEPER,
        InvalidName("group", "a/b", "No slashes."),
        400,
        {"status": "error", "reason": "Group name not valid. No slashes."},
    ),
]


@pytest.mark.parametrize(
    ("path", "error", "status", "body"),
    EXACT,
    ids=[f"{type(error).__name__}@{path}" for path, error, _, _ in EXACT],
)
def test_former_hand_built_answers_are_unchanged(
    app: types.SimpleNamespace, path: str, error: GitStateError, status: int, body: dict[str, Any]
) -> None:
    result = answer(app, error, path)
    assert result.status_code == status
    assert result.json == body


def test_unrecognized_webhook_type_details_are_text(app: types.SimpleNamespace) -> None:
    result = answer(app, UnrecognizedWebhookType("svn"), CODE_MANAGER)
    assert result.status_code == 400
    assert result.json["kind"] == "puppetlabs.code-manager/unrecognized-webhook-type"
    assert result.json["details"].startswith("Currently supported valid webhook types include: ")


def test_store_busy_asks_to_retry(app: types.SimpleNamespace) -> None:
    for path in (GATEKEEPER, CODE_MANAGER):
        result = answer(app, StoreBusy("refs/heads/state", 5.0, 3, "lock held"), path)
        assert result.status_code == 503
        assert result.headers["retry-after"] == "1"
        assert result.json["status"] == "error"


def test_file_sync_refusal_challenges(app: types.SimpleNamespace) -> None:
    result = answer(app, Unauthorized("no file-sync token"), FILE_SYNC)
    assert result.status_code == 401
    assert result.headers["www-authenticate"] == 'Token realm="gitstate file sync"'
    assert result.json == {
        "kind": "puppetlabs.rbac/user-unauthenticated",
        "msg": "no file-sync token",
    }


@pytest.mark.parametrize("path", [GATEKEEPER, CODE_MANAGER])
def test_a_bug_is_a_json_500_that_logs_no_token(
    app: types.SimpleNamespace,
    path: str,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    secret = "gst_" + "s3cr3t" * 8
    with caplog.at_level(logging.DEBUG):
        result = answer(app, KeyError("boom"), path, params={"token": secret})
    assert result.status_code == 500
    assert result.json == {"status": "error", "reason": web_errors.INTERNAL}
    assert "boom" not in result.text
    assert any("KeyError" in (record.exc_text or "") for record in caplog.records)
    printed = capfd.readouterr()
    logged = caplog.text + printed.out + printed.err
    assert path in logged
    assert secret not in logged


def test_an_error_meant_for_nobody_tells_nothing(app: types.SimpleNamespace) -> None:
    result = answer(app, GitStateError("/secret/path/of/the/server"), CODE_MANAGER)
    assert result.status_code == 500
    assert "secret" not in result.text


def test_no_resource_builds_an_error_body() -> None:
    """Only ``web/errors.py`` (and the OpenAPI document) spell out error bodies."""
    pattern = re.compile(
        r"""["'](kind|msg)["']\s*:|falcon\.HTTP_[45]\d\d|puppetlabs\.|\.to_json\(\)\s*$"""
    )
    offenders = []
    for source in sorted(WEB_DIR.glob("*.py")):
        if source.name in ("errors.py", "openapi.py"):
            continue
        for number, line in enumerate(source.read_text().splitlines(), 1):
            if pattern.search(line) and "result.to_json()" not in line:
                offenders.append(f"{source.name}:{number}: {line.strip()}")
    assert offenders == []
