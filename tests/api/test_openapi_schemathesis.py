"""schemathesis against the app: no 5xx, and every answer matches the document.

The app runs in-process (WSGI) with every part configured: a local control
repository built in ``tmp_path`` (nothing touches a real remote), file sync
with a token, short long-poll and wait timeouts. Each operation gets a small,
bounded number of generated cases, once with authentication off and once
with it on (with and without a token), so the whole file stays well under a
minute on two cores.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.config._checks import (
    NEGATIVE_DATA_REJECTION_EXPECTED_STATUSES,
    NegativeDataRejectionConfig,
)
from schemathesis.specs.openapi.checks import positive_data_acceptance

from gitstate.cli.sample import build
from gitstate.config import Config
from gitstate.services import Services
from gitstate.web.app import create_app
from gitstate.web.openapi import routed
from tests.support.openapi import FILE_SYNC_TOKEN, sample_config

#: Generated cases per operation and app; small enough for the time budget.
EXAMPLES = 12


class _Apps:
    """The two apps under test, built once for the module (building is the slow part)."""

    def __init__(self, root: Path) -> None:
        sample = build(root / "repos")
        self.open = create_app(services=Services(sample_config(root / "open", sample, wait=0.2)))
        auth = Services(sample_config(root / "auth", sample, wait=0.2, webhook_authentication=True))
        self.token = auth.tokens.issue(
            "fuzzer", permissions=("gates:shop",), lifetime="1h", actor="root"
        ).token
        self.closed = create_app(services=auth)


@pytest.fixture(scope="module")
def apps(tmp_path_factory: pytest.TempPathFactory) -> Iterator[_Apps]:
    # Module-scoped, so built before conftest's per-test git scrub: scrub here too.
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HOME", str(tmp_path_factory.mktemp("home")))
        patch.setenv("GIT_CONFIG_NOSYSTEM", "1")
        for role in ("AUTHOR", "COMMITTER"):
            patch.setenv(f"GIT_{role}_NAME", "Fuzz Test")
            patch.setenv(f"GIT_{role}_EMAIL", "fuzz@example.test")
        apps = _Apps(tmp_path_factory.mktemp("schemathesis"))
        yield apps


def _document() -> dict[str, Any]:
    """Return the document as an app of this checkout serves it."""
    with tempfile.TemporaryDirectory() as scratch:
        config = Config.from_mapping({"datadir": scratch, "state": {"fsync": False}})
        return routed(create_app(config))


# The schemas are loaded from the document at import (``parametrize`` needs
# them then, before any app exists); each test attaches its app to the case's
# schema, as ``from_wsgi`` would, and the case goes through WSGI.
DOCUMENT = _document()
OPEN = schemathesis.openapi.from_dict(DOCUMENT)
CLOSED = schemathesis.openapi.from_dict(DOCUMENT)
for _schema in (OPEN, CLOSED):
    _schema.config.update(base_url="http://localhost")
    # A write that is malformed *and* names a stale ``If-Match`` answers 412
    # (the precondition is judged first): a documented rejection like 400.
    _schema.config.checks.negative_data_rejection = NegativeDataRejectionConfig(
        expected_statuses=[*NEGATIVE_DATA_REJECTION_EXPECTED_STATUSES, "412"]
    )


@schemathesis.serializer("application/x-git-upload-pack-request")
def _git_negotiation(ctx: Any, value: Any) -> bytes:
    """Send whatever was generated as the bytes of a git negotiation."""
    return value if isinstance(value, bytes) else json.dumps(value).encode()


def _call(case: schemathesis.Case, app: object, **kwargs: Any) -> None:
    """Send ``case`` to ``app`` and run every check but positive-data acceptance."""
    # schemathesis' own probes (``ignored_auth``) use the schema's app.
    case.operation.schema.app = app
    case.call_and_validate(excluded_checks=_EXCLUDED, app=app, **kwargs)


#: ``positive_data_acceptance`` expects every schema-valid request to succeed,
#: but the server also judges what no schema can say: whether a gate, ticket
#: or deploy exists, whether ``If-Match`` names the tip, whether ``at`` is a
#: commit. Those answers (400/404/412) are documented and still validated.
_EXCLUDED = [positive_data_acceptance]

_SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    suppress_health_check=list(HealthCheck),
)


@OPEN.parametrize()
@_SETTINGS
def test_without_auth(case: schemathesis.Case, apps: _Apps) -> None:
    headers = {"X-Authentication": FILE_SYNC_TOKEN} if "/file-sync/" in case.path else None
    _call(case, apps.open, headers=headers)


@CLOSED.parametrize()
@_SETTINGS
def test_with_auth_and_no_token(case: schemathesis.Case, apps: _Apps) -> None:
    _call(case, apps.closed)


@CLOSED.parametrize()
@_SETTINGS
def test_with_auth_and_a_token(case: schemathesis.Case, apps: _Apps) -> None:
    token = FILE_SYNC_TOKEN if "/file-sync/" in case.path else apps.token
    _call(case, apps.closed, headers={"X-Authentication": token})
