"""``GET /openapi.json``: the OpenAPI 3.1 document of every route gitstate serves.

The document is written here, next to the resources it describes, as plain
data; it is not generated from them. Tests keep the two honest:
``openapi-spec-validator`` checks the document, ``openapi-core`` validates
the requests and responses of a replayed set of calls, and schemathesis
fuzzes the running app against it (``tests/api/test_openapi*.py``). A route
added to ``web/app.py`` without an entry here fails
``test_every_route_is_documented``.

Error bodies come in three shapes, and each response names the one it uses:

* ``GateError``: gatekeeper's ``{"status": "error", "reason"}``, used by
  ``/api/``, by Falcon's own errors (a bad query parameter, a missing static
  file) and by 503 answers everywhere;
* ``CodeManagerError``: Code Manager's ``{"kind", "msg", "details"?}``,
  used under ``/code-manager/v1/`` and ``/file-sync/v1/``;
* ``AuthError``: both at once, so a 401 or 403 from token checks reads
  right in either family's client.
"""

from __future__ import annotations

import copy
import json
import re
from typing import Any

import falcon
import falcon.asgi

import gitstate

#: Media type of JSON bodies.
JSON = "application/json"

_HEX = {"type": "string", "pattern": "^[0-9a-f]{4,64}$"}
_NULLABLE_STRING = {"type": ["string", "null"]}


def _or_blank(schema: dict[str, Any]) -> dict[str, Any]:
    """Allow a blank query value too: Falcon reads ``?x=`` as no ``x`` at all."""
    return {"anyOf": [schema, {"const": ""}]}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _content(schema: dict[str, Any], media: str = JSON) -> dict[str, Any]:
    return {"content": {media: {"schema": schema}}}


def _response(
    description: str,
    schema: dict[str, Any] | None = None,
    *,
    media: str = JSON,
    headers: dict[str, Any] | None = None,
) -> dict[str, Any]:
    answer: dict[str, Any] = {"description": description}
    if schema is not None:
        answer.update(_content(schema, media))
    if headers:
        answer["headers"] = headers
    return answer


def _error(description: str, shape: str) -> dict[str, Any]:
    return _response(description, _ref(shape))


def _param(name: str, where: str, schema: dict[str, Any], description: str, **more: Any) -> dict:
    return {"name": name, "in": where, "schema": schema, "description": description, **more}


def _body(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "required": True, **_content(schema)}


def _object(required: list[str], properties: dict[str, Any], **more: Any) -> dict[str, Any]:
    return {"type": "object", "required": required, "properties": properties, **more}


# -- shared parameters and responses ---------------------------------------------------------

_NAME = {"type": "string", "pattern": "^[A-Za-z0-9_@+=][A-Za-z0-9_@+=-]{0,99}$"}
_PATH_NAMES = {
    name: _param(
        name,
        "path",
        _NAME,
        f"The {name} name: ASCII letters, digits and `_ - @ + =`, not starting with `-`, "
        "1 to 100 characters; anything else is a 400.",
        required=True,
    )
    for name in ("group", "service", "environment")
}
_AT = _param(
    "at",
    "query",
    {"type": "string"},
    "A state commit id (7 to 40 hex digits) or an ISO 8601 time: answer as of then.",
)
_WRITE_HEADERS = [
    _param(
        "If-Match",
        "header",
        {"type": "string"},
        'Write only if the state branch is at one of these commits (`"<commit>"`, `*`).',
    ),
    _param(
        "X-Gitstate-Actor",
        "header",
        {"type": "string"},
        "The actor named in the commit when authentication is off (else the token's user).",
    ),
    _param(
        "X-Request-Id",
        "header",
        {"type": "string"},
        "Recorded as the commit's `Request-Id:` trailer; a fresh id when absent.",
    ),
]
_ETAG = {
    "ETag": {
        "description": "The state commit the answer was read from or written as.",
        "schema": {"type": "string"},
    }
}
_UNAVAILABLE = _response(
    "The state repository is busy or holds a record nobody can read; retry later.",
    _ref("GateError"),
)
_AUTH = {
    "401": _error("No token, or an invalid, expired or revoked one.", "AuthError"),
    "403": _error("The token's user lacks the permission this needs.", "AuthError"),
}
_READ_AUTH = {
    "401": _error(
        "No valid token came and this read needs one (`auth.anonymous_reads`: Code "
        "Manager's reads by default; `auth.read_requires_token`: every read).",
        "AuthError",
    )
}
_FILE_SYNC_401 = _error(
    "No file-sync token configured, none presented, or a wrong one.", "CodeManagerError"
)
_FILE_SYNC_SECURITY = [{"fileSyncTokenHeader": []}, {"fileSyncTokenQuery": []}]
_PUBLIC: list[dict[str, list[str]]] = []


def _gate_answer(
    description: str,
    schema: dict[str, Any],
    *,
    write: bool,
    not_found: str | None = None,
) -> dict[str, Any]:
    responses: dict[str, Any] = {
        "200": _response(description, schema, headers=_ETAG),
        "400": _error(
            "A name, the body, `at` or a query flag is not valid (or the body is over 64 KiB).",
            "GateError",
        ),
    }
    if not_found:
        responses["404"] = _error(not_found, "GateError")
    if write:
        responses["412"] = _response(
            "`If-Match` named a commit the state branch is no longer at.",
            _ref("StateMoved"),
        )
        responses.update(_AUTH)
    else:
        responses.update(_READ_AUTH)
    responses["503"] = _UNAVAILABLE
    return responses


# -- schemas -----------------------------------------------------------------------------------


def _page_schemas() -> dict[str, Any]:
    """Schemas of the page's reads (environments overview, audit trail)."""
    string = {"type": "string"}
    strings = {"type": "array", "items": string}
    entry = {
        "commit": string,
        "time": {"type": "string", "description": "Commit time, UTC, ISO 8601."},
        "actor": string,
        "subject": string,
        "operation": _NULLABLE_STRING,
        "request_id": _NULLABLE_STRING,
        "parent": _NULLABLE_STRING,
        "gates": {**strings, "description": "`<group>/<service>/<environment>` changed."},
        "environments": {**strings, "description": "Code environments touched."},
        "deploys": {"type": "array", "items": {"type": "integer"}},
        "paths_total": {"type": "integer"},
        "link": {"type": "string", "description": "`/api/audit/<commit>`: what changed."},
    }
    change_kind = {"enum": ["added", "modified", "deleted"]}
    active = _object(
        ["id"],
        {
            "id": {"type": "integer"},
            "queued_at": string,
            "started_at": string,
            "worker": string,
            "blocked": string,
        },
    )
    return {
        "AuditEntry": _object(
            [*entry, "paths"],
            {
                **entry,
                "paths": {
                    "type": "array",
                    "items": _object(["path", "change"], {"path": string, "change": change_kind}),
                    "description": "The records changed (the first 50; `paths_total` counts all).",
                },
            },
        ),
        "AuditDetail": _object(
            [*entry, "changes"],
            {
                **entry,
                "changes": {
                    "type": "array",
                    "items": _object(
                        ["path", "change", "before", "after", "diff"],
                        {
                            "path": string,
                            "change": change_kind,
                            "before": _NULLABLE_STRING,
                            "after": _NULLABLE_STRING,
                            "diff": {"type": "string", "description": "A unified diff."},
                        },
                    ),
                },
            },
        ),
        "EnvironmentRow": _object(
            [
                "environment",
                "signature",
                "deployed_at",
                "deployed_by",
                "source",
                "branch",
                "clients",
                "deploying",
                "queued",
                "last_failure",
                "may_roll_back",
            ],
            {
                "environment": string,
                "signature": _NULLABLE_STRING,
                "environment_commit": _NULLABLE_STRING,
                "code_commit": _NULLABLE_STRING,
                "deployed_at": _NULLABLE_STRING,
                "deployed_by": _NULLABLE_STRING,
                "pushed_by": string,
                "deploy_id": {"type": ["integer", "null"]},
                "source": _NULLABLE_STRING,
                "branch": _NULLABLE_STRING,
                "rollback": {"type": ["object", "null"]},
                "clients": {
                    "type": "array",
                    "items": _object(
                        ["client", "status"],
                        {
                            "client": string,
                            "status": {"enum": ["synced", "behind", "missing", "never-checked-in"]},
                            "environment_commit": _NULLABLE_STRING,
                            "last_check_in_time": _NULLABLE_STRING,
                            "failed": _NULLABLE_STRING,
                        },
                    ),
                },
                "deploying": {"anyOf": [active, {"type": "null"}]},
                "queued": {"type": "array", "items": active},
                "last_failure": {
                    "anyOf": [
                        _object(
                            ["id", "error"],
                            {
                                "id": {"type": "integer"},
                                "finished_at": _NULLABLE_STRING,
                                "error": {"anyOf": [_ref("CodeManagerError"), {"type": "null"}]},
                            },
                        ),
                        {"type": "null"},
                    ]
                },
                "may_roll_back": {"type": "boolean"},
            },
        ),
    }


def _schemas() -> dict[str, Any]:
    ticket = _object(
        ["id", "updated", "expiration_date"],
        {
            "id": {"type": "string"},
            "updated": {"type": "string"},
            "expiration_date": {"type": "number", "description": "Unix seconds; 0 = never."},
            "link": _NULLABLE_STRING,
        },
    )
    cm_error = {"type": "object", "required": ["kind", "msg"]}
    cm_error["properties"] = {
        "kind": {"type": "string"},
        "msg": {"type": "string"},
        "details": {},
    }
    deployed = _object(
        ["environment"],
        {
            "environment": {"type": "string"},
            "date": _NULLABLE_STRING,
            "deploy-signature": _NULLABLE_STRING,
            "environment-commit": _NULLABLE_STRING,
        },
    )
    file_sync = _object(
        ["environment-commit", "code-commit"],
        {"environment-commit": _NULLABLE_STRING, "code-commit": _NULLABLE_STRING},
    )
    queued_item = _object(
        ["id", "environment"],
        {
            "id": {"type": "integer"},
            "environment": {"type": "string"},
            "queued-at": _NULLABLE_STRING,
            "waiting-for": {"description": "Why a closed gate holds the deploy back."},
            "error": {"anyOf": [_ref("CodeManagerError"), {"type": "null"}]},
        },
    )
    return {
        "GateError": _object(
            ["status", "reason"],
            {
                "status": {"const": "error"},
                "reason": {"type": "string"},
                "path": {"type": "string", "description": "The unreadable record (503)."},
            },
        ),
        "StateMoved": _object(
            ["status", "reason", "commit"],
            {
                "status": {"const": "error"},
                "reason": {"type": "string"},
                "commit": {"type": ["string", "null"], "description": "The tip now."},
            },
        ),
        "CodeManagerError": cm_error,
        "FileSyncCommits": file_sync,
        "AuthError": _object(
            ["status", "reason", "kind", "msg"],
            {
                "status": {"const": "error"},
                "reason": {"type": "string"},
                "kind": {"type": "string", "pattern": "^puppetlabs\\.rbac/"},
                "msg": {"type": "string"},
            },
        ),
        "Ok": _object(["status"], {"status": {"const": "ok"}}),
        "Ticket": ticket,
        "Environment": _object(
            ["queue", "state", "message", "state_timestamp", "message_timestamp"],
            {
                "queue": {"type": "array", "items": _ref("Ticket")},
                "state": {"enum": ["open", "closed"]},
                "message": {"type": "string"},
                "state_timestamp": {"type": "string"},
                "message_timestamp": {"type": "string"},
                "manual_state": {
                    "enum": ["open", "closed"],
                    "description": "The stored state (`GET /api/gates` only).",
                },
                "closed_by": {
                    "description": "Every reason the gate is closed (`GET /api/gates` only).",
                    "type": "array",
                    "items": _object(
                        ["kind", "detail"],
                        {
                            "kind": {"enum": ["manual", "holiday", "rule", "ticket"]},
                            "detail": {"type": "string"},
                        },
                    ),
                },
            },
        ),
        "Service": _object(
            ["document_version", "name", "group", "environments"],
            {
                "document_version": {"type": "number"},
                "name": {"type": "string"},
                "group": {"type": "string"},
                "environments": {
                    "type": "object",
                    "additionalProperties": _ref("Environment"),
                },
            },
        ),
        "TestAndSet": {
            "oneOf": [
                _object(
                    ["status", "ticket"],
                    {"status": {"enum": ["ok", "queued"]}, "ticket": _ref("Ticket")},
                ),
                _object(["status"], {"status": {"const": "denied"}}),
            ]
        },
        "Holiday": _object(
            ["date", "reason", "environments"],
            {
                "date": {"type": "string", "format": "date"},
                "reason": {"type": "string"},
                "environments": {"type": "array", "items": {"type": "string"}},
            },
        ),
        "DeployAnswer": _object(
            ["environment"],
            {
                "environment": {"type": "string"},
                "id": {"type": "integer"},
                "status": {"enum": ["new", "queued", "deploying", "complete", "failed"]},
                "deploy-signature": _NULLABLE_STRING,
                "file-sync": _ref("FileSyncCommits"),
                "error": {"anyOf": [_ref("CodeManagerError"), {"type": "null"}]},
            },
            description="One environment's answer; a dry run gives only `environment`.",
        ),
        "DeployStatus": _object(
            ["id", "environment", "status"],
            {
                "id": {"type": "integer"},
                "environment": {"type": "string"},
                "status": {"enum": ["new", "queued", "deploying", "complete", "failed"]},
                "queued-at": _NULLABLE_STRING,
                "started-at": _NULLABLE_STRING,
                "finished-at": _NULLABLE_STRING,
                "deploy-signature": _NULLABLE_STRING,
                "file-sync": _ref("FileSyncCommits"),
                "error": {"anyOf": [_ref("CodeManagerError"), {"type": "null"}]},
            },
        ),
        "Status": _object(
            ["deploys-status", "file-sync-storage-status", "file-sync-client-status"],
            {
                "deploys-status": {
                    "type": "object",
                    "additionalProperties": {"type": "array", "items": queued_item},
                },
                "file-sync-storage-status": _object(
                    ["deployed"], {"deployed": {"type": "array", "items": deployed}}
                ),
                "file-sync-client-status": _object(
                    ["all-synced", "file-sync-clients"],
                    {
                        "all-synced": {"type": "boolean"},
                        "file-sync-clients": {
                            "type": "object",
                            "additionalProperties": _object(
                                ["synced-with-file-sync-storage"],
                                {
                                    "last_check_in_time": _NULLABLE_STRING,
                                    "synced-with-file-sync-storage": {"type": "boolean"},
                                    "code-commit": _NULLABLE_STRING,
                                    "deployed": {"type": "array", "items": deployed},
                                    "local-edits": {"type": "array"},
                                    "local-edits-at": _NULLABLE_STRING,
                                },
                            ),
                        },
                    },
                ),
            },
        ),
        **_page_schemas(),
        "CheckIn": _object(
            ["name"],
            {
                "name": {"type": "string"},
                "code_commit": _NULLABLE_STRING,
                "time": {},
                "synced_at": {},
                "environments": {
                    "description": (
                        "Sent by clients before 2026-12 only: the environments are read "
                        "from `code_commit` in storage."
                    ),
                    "deprecated": True,
                    "type": "object",
                    "additionalProperties": {
                        "type": "object",
                        "properties": {
                            key: {"type": "string"}
                            for key in ("environment-commit", "deploy-signature", "tree", "version")
                        },
                    },
                },
                "local_edits": {"type": "array", "items": {"type": "object"}},
                "local_edits_total": {
                    "type": "integer",
                    "description": "How many edits there were; `local_edits` may hold fewer.",
                },
                "local_edits_at": {},
            },
        ),
    }


# -- paths -------------------------------------------------------------------------------------


def _gate_paths() -> dict[str, Any]:
    group, service, environment = (_PATH_NAMES[n] for n in ("group", "service", "environment"))
    gate_set = _object(
        ["gates"],
        {
            "gates": {
                "type": "object",
                "description": "group → service → environment or list of environments.",
                "additionalProperties": {
                    "type": "object",
                    "additionalProperties": {
                        "anyOf": [
                            {"type": "string"},
                            {"type": "array", "items": {"type": "string"}},
                        ]
                    },
                },
            },
            "ticket": {"type": "string", "description": "A ticket already held or queued."},
            "link": {"type": "string"},
        },
    )
    environments = {"type": "array", "items": {"type": "string"}, "minItems": 1}
    return {
        "/api/gates": {
            "get": {
                "operationId": "listGates",
                "tags": ["gates"],
                "summary": "Every service's gates, with derived states and closure reasons.",
                "responses": _gate_answer(
                    "`{commit, services}`, sorted by group and service.",
                    _object(
                        ["commit", "services"],
                        {
                            "commit": _NULLABLE_STRING,
                            "services": {"type": "array", "items": _ref("Service")},
                        },
                    ),
                    write=False,
                ),
            },
            "put": {
                "operationId": "testAndSet",
                "tags": ["gates"],
                "summary": "Take, or queue for, several gates at once (one commit).",
                "parameters": [
                    _param(
                        "queue",
                        "query",
                        _or_blank({"type": "boolean"}),
                        "Queue behind a held gate instead of being denied.",
                    ),
                    *_WRITE_HEADERS,
                ],
                "requestBody": _body(gate_set, "The gates to take, and the ticket if known."),
                "responses": _gate_answer(
                    "`ok` or `queued` with the ticket, or `denied`.",
                    _ref("TestAndSet"),
                    write=True,
                    not_found="Unknown gate, environment or ticket.",
                ),
            },
        },
        "/api/gates/{group}/{service}": {
            "parameters": [group, service],
            "get": {
                "operationId": "getService",
                "tags": ["gates"],
                "summary": "A service's document with derived states.",
                "parameters": [_AT],
                "responses": _gate_answer(
                    "The document.",
                    _ref("Service"),
                    write=False,
                    not_found="Service or Group not found.",
                ),
            },
            "post": {
                "operationId": "createService",
                "tags": ["gates"],
                "summary": "Create a service's gates, open and with empty queues.",
                "parameters": _WRITE_HEADERS,
                "requestBody": _body(
                    _object(["environments"], {"environments": environments}),
                    "The environments to create.",
                ),
                "responses": _gate_answer(
                    "The new document.", _ref("Service"), write=True, not_found=None
                ),
            },
            "put": {
                "operationId": "updateService",
                "tags": ["gates"],
                "summary": "Move, rename, replace or set environments.",
                "parameters": _WRITE_HEADERS,
                "requestBody": _body(
                    {
                        "type": "object",
                        "properties": {
                            "group": {"type": "string"},
                            "name": {"type": "string"},
                            "environments": {
                                "anyOf": [
                                    {"type": "array", "items": {"type": "string"}},
                                    {
                                        "type": "object",
                                        "additionalProperties": {
                                            "type": "object",
                                            "properties": {
                                                "state": {"enum": ["open", "closed"]},
                                                "message": {"type": "string"},
                                            },
                                        },
                                    },
                                ]
                            },
                        },
                    },
                    "What to change; a list of environments replaces them all.",
                ),
                "responses": _gate_answer(
                    "The document with stored states.",
                    _ref("Service"),
                    write=True,
                    not_found="Service or Group not found.",
                ),
            },
            "delete": {
                "operationId": "deleteService",
                "tags": ["gates"],
                "summary": "Delete a service's gates (its tickets stay).",
                "parameters": _WRITE_HEADERS,
                "responses": _gate_answer(
                    "Deleted.", _ref("Ok"), write=True, not_found="Service or Group not found."
                ),
            },
        },
        "/api/gates/{group}/{service}/{environment}": {
            "parameters": [group, service, environment],
            "get": {
                "operationId": "getEnvironment",
                "tags": ["gates"],
                "summary": "One gate with its derived state.",
                "parameters": [_AT],
                "responses": _gate_answer(
                    "The environment object.",
                    _ref("Environment"),
                    write=False,
                    not_found="Service, group or environment not found.",
                ),
            },
            "put": {
                "operationId": "setEnvironment",
                "tags": ["gates"],
                "summary": "Open or close a gate by hand and/or set its message.",
                "parameters": _WRITE_HEADERS,
                "requestBody": _body(
                    {
                        "type": "object",
                        "properties": {
                            "state": {"enum": ["open", "closed"]},
                            "message": {"type": "string"},
                        },
                    },
                    "The new state and/or message.",
                ),
                "responses": _gate_answer(
                    "The whole document with stored states.",
                    _ref("Service"),
                    write=True,
                    not_found="Service, group or environment not found.",
                ),
            },
        },
        "/api/gates/{group}/{service}/{environment}/history": {
            "parameters": [group, service, environment],
            "get": {
                "operationId": "gateHistory",
                "tags": ["gates"],
                "summary": "The commits that changed one gate, newest first.",
                "parameters": [
                    _param(
                        "limit",
                        "query",
                        _or_blank({"type": "integer", "minimum": 1}),
                        "At most this many.",
                    )
                ],
                "responses": _gate_answer(
                    "The history.",
                    _object(
                        ["group", "service", "environment", "history"],
                        {
                            "group": {"type": "string"},
                            "service": {"type": "string"},
                            "environment": {"type": "string"},
                            "history": {
                                "type": "array",
                                "items": _object(
                                    ["commit", "time", "actor", "operation", "subject", "present"],
                                    {
                                        "commit": {"type": "string"},
                                        "time": {"type": "string"},
                                        "actor": _NULLABLE_STRING,
                                        "operation": _NULLABLE_STRING,
                                        "subject": {"type": "string"},
                                        "present": {"type": "boolean"},
                                        "state": {"enum": ["open", "closed", None]},
                                        "message": _NULLABLE_STRING,
                                        "queue": {"type": "array", "items": {"type": "string"}},
                                    },
                                ),
                            },
                        },
                    ),
                    write=False,
                    not_found="Service, group or environment not found.",
                ),
            },
        },
        "/api/tickets/{ticket_id}": {
            "parameters": [
                _param("ticket_id", "path", {"type": "string"}, "The ticket.", required=True)
            ],
            "delete": {
                "operationId": "releaseTicket",
                "tags": ["gates"],
                "summary": "Release a ticket; unknown tickets are fine.",
                "parameters": _WRITE_HEADERS,
                "responses": _gate_answer("Released.", _ref("Ok"), write=True),
            },
        },
        "/api/holidays/": _holidays("listHolidays", "setHolidays"),
        "/api/holidays": _holidays("listHolidaysNoSlash", "setHolidaysNoSlash"),
        "/api/watch": {
            "get": {
                "operationId": "watch",
                "tags": ["gates"],
                "summary": "Long poll: answer once the state branch is not at `since`.",
                "parameters": [
                    _param("since", "query", {"type": "string"}, "The last state commit seen."),
                    _param(
                        "timeout",
                        "query",
                        _or_blank({"type": "number", "minimum": 0}),
                        "Seconds to wait at most (capped at 25).",
                    ),
                ],
                "responses": {
                    "200": _response(
                        "The tip; `retry` > 0 asks the client to wait that long first.",
                        _object(
                            ["commit", "changed", "retry"],
                            {
                                "commit": _NULLABLE_STRING,
                                "changed": {"type": "boolean"},
                                "retry": {"type": "number"},
                            },
                        ),
                    ),
                    "400": _error("`timeout` is not a number of at least 0.", "GateError"),
                    **_READ_AUTH,
                    "503": _UNAVAILABLE,
                },
            },
        },
    }


def _holidays(list_id: str, set_id: str) -> dict[str, Any]:
    holiday = _ref("Holiday")
    listed = _object(
        ["holidays"],
        {
            "holidays": {
                "type": "array",
                "items": {
                    "allOf": [
                        holiday,
                        _object(
                            ["_id", "source"],
                            {"_id": {"type": "string"}, "source": {"enum": ["config", "api"]}},
                        ),
                    ]
                },
            }
        },
    )
    return {
        "get": {
            "operationId": list_id,
            "tags": ["gates"],
            "summary": "Holidays from today on, sorted by date.",
            "parameters": [_AT],
            "responses": _gate_answer("The holidays.", listed, write=False),
        },
        "post": {
            "operationId": set_id,
            "tags": ["gates"],
            "summary": "Replace every holiday set through the API.",
            "parameters": _WRITE_HEADERS,
            "requestBody": _body(
                _object(["holidays"], {"holidays": {"type": "array", "items": holiday}}),
                "The holidays; config holidays stay.",
            ),
            "responses": _gate_answer("Replaced.", _ref("Ok"), write=True),
        },
    }


def _code_manager_paths() -> dict[str, Any]:
    cm_400 = _error("The body or a parameter is not valid.", "CodeManagerError")
    deploy_request = {
        "type": "object",
        "properties": {
            "environments": {
                "anyOf": [
                    {
                        "type": "array",
                        "items": {"type": "string", "minLength": 1, "maxLength": 255},
                        "maxItems": 1000,
                    },
                    {
                        "type": "string",
                        "pattern": "[^,\\s]",
                        "description": "One comma- and space-separated list, as Code "
                        "Manager's API table describes it.",
                    },
                ]
            },
            "deploy-all": {"type": ["boolean", "null"]},
            "wait": {"type": ["boolean", "null"]},
            "dry-run": {"type": ["boolean", "null"]},
            "deploy-modules": {"type": ["boolean", "null"]},
        },
        "description": "Name `environments` or set `deploy-all` (or `dry-run`); a flag that "
        "is null counts as absent.",
    }
    return {
        "/code-manager/v1/deploys": {
            "post": {
                "operationId": "deploy",
                "tags": ["code-manager"],
                "summary": "Queue (and with `wait`, wait for) deploys.",
                "parameters": [_WRITE_HEADERS[2]],
                "requestBody": _body(deploy_request, "What to deploy."),
                "responses": {
                    "200": _response(
                        "One answer per environment; refused ones carry an `error`.",
                        {"type": "array", "items": _ref("DeployAnswer")},
                    ),
                    "400": cm_400,
                    **_AUTH,
                    "502": _error(
                        "A control repository could not be fetched (`collect-failed`).",
                        "CodeManagerError",
                    ),
                    "503": _UNAVAILABLE,
                },
            },
        },
        "/code-manager/v1/deploys/status": {
            "get": {
                "operationId": "deployStatus",
                "tags": ["code-manager"],
                "summary": "The queue, storage and clients; or one deploy with `?id=`.",
                "parameters": [
                    _param("id", "query", {"type": "string", "pattern": "^[0-9]+$"}, "A deploy.")
                ],
                "responses": {
                    "200": _response(
                        "The status document, or the deploy asked for.",
                        {"anyOf": [_ref("Status"), _ref("DeployStatus")]},
                    ),
                    "400": cm_400,
                    **_READ_AUTH,
                    "404": _error("No deploy has that id.", "CodeManagerError"),
                    "503": _UNAVAILABLE,
                },
            },
        },
        "/code-manager/v1/webhook": {
            "post": {
                "operationId": "webhook",
                "tags": ["code-manager"],
                "summary": "A git host's push: queue deploys, remove deleted branches.",
                "parameters": [
                    _param(
                        "type",
                        "query",
                        {
                            "enum": [
                                "github",
                                "gitlab",
                                "bitbucket",
                                "bitbucket-server",
                                "stash",
                                "tfs-git",
                                "gitstate-hook",
                            ]
                        },
                        "The provider.",
                        required=True,
                    ),
                    _param("prefix", "query", {"type": "string"}, "The environment prefix."),
                    _WRITE_HEADERS[2],
                ],
                "requestBody": _body(
                    {"type": "object"}, "The provider's push payload, signed if so configured."
                ),
                "responses": {
                    "200": _response(
                        '`{"status": "OK"}`; the post-receive hook\'s type adds what was done.',
                        _object(
                            ["status"],
                            {
                                "status": {"const": "OK"},
                                "deploys": {"type": "array", "items": _ref("DeployAnswer")},
                                "removed": {"type": "array", "items": {"type": "string"}},
                                "kept": {"type": "array", "items": {"type": "string"}},
                            },
                        ),
                    ),
                    "400": _error(
                        "Unknown type, or a payload missing a field.", "CodeManagerError"
                    ),
                    "401": _response(
                        "No valid token (required unless `auth.webhook_authentication` is "
                        "off; then the type's secret may stand in), or the type's signature "
                        "is missing or wrong.",
                        {"anyOf": [_ref("AuthError"), _ref("CodeManagerError")]},
                    ),
                    "403": _error(
                        "The type is turned off (`webhooks.<type>.enabled: false`).",
                        "CodeManagerError",
                    ),
                    "413": _error("The body is over 1 MiB.", "CodeManagerError"),
                    "503": _UNAVAILABLE,
                },
            },
        },
        "/code-manager/v1/rollbacks": {
            "post": {
                "operationId": "rollback",
                "tags": ["code-manager", "file-sync"],
                "summary": "Publish an earlier version of an environment again.",
                "parameters": _WRITE_HEADERS[1:],
                "requestBody": _body(
                    _object(
                        ["environment"],
                        {
                            "environment": {
                                "type": "string",
                                "pattern": "^[A-Za-z0-9_][A-Za-z0-9_.-]{0,199}$",
                            },
                            "to": _HEX,
                            "wait": {"type": "boolean"},
                        },
                    ),
                    "The environment, and the signature to go back to (default: the previous).",
                ),
                "responses": {
                    "200": _response(
                        "Done, like a waited deploy's entry.",
                        _object(
                            ["environment", "status", "deploy-signature", "file-sync"],
                            {
                                "environment": {"type": "string"},
                                "status": {"const": "complete"},
                                "deploy-signature": {"type": "string"},
                                "rolled-back-from": _NULLABLE_STRING,
                                "changed": {"type": "boolean"},
                                "file-sync": _ref("FileSyncCommits"),
                                "error": _ref("CodeManagerError"),
                            },
                        ),
                    ),
                    "400": cm_400,
                    **_AUTH,
                    "404": _error("Not deployed, or no version matches `to`.", "CodeManagerError"),
                    "503": _UNAVAILABLE,
                },
            },
        },
    }


def _file_sync_paths() -> dict[str, Any]:
    binary: dict[str, Any] = {}
    return {
        "/file-sync/v1/git/info/refs": {
            "get": {
                "operationId": "gitInfoRefs",
                "tags": ["file-sync"],
                "summary": "git smart HTTP: the storage repository's ref advertisement.",
                "security": _FILE_SYNC_SECURITY,
                "parameters": [
                    _param(
                        "service",
                        "query",
                        {"type": "string"},
                        "Only `git-upload-pack` is served.",
                    ),
                    _param("Git-Protocol", "header", {"type": "string"}, "e.g. `version=2`."),
                ],
                "responses": {
                    "200": _response(
                        "pkt-lines.",
                        binary,
                        media="application/x-git-upload-pack-advertisement",
                    ),
                    "401": _FILE_SYNC_401,
                    "403": _error("Any service but `git-upload-pack`.", "CodeManagerError"),
                },
            },
        },
        "/file-sync/v1/git/git-upload-pack": {
            "post": {
                "operationId": "gitUploadPack",
                "tags": ["file-sync"],
                "summary": "git smart HTTP: send objects to `git fetch`.",
                "security": _FILE_SYNC_SECURITY,
                "parameters": [
                    _param("Git-Protocol", "header", {"type": "string"}, "e.g. `version=2`."),
                ],
                "requestBody": {
                    "required": False,
                    "description": "git's negotiation, possibly gzipped; none asks for nothing.",
                    **_content(binary, "application/x-git-upload-pack-request"),
                },
                "responses": {
                    "200": _response(
                        "upload-pack's answer, streamed.",
                        binary,
                        media="application/x-git-upload-pack-result",
                    ),
                    "401": _FILE_SYNC_401,
                    "413": _error("The negotiation is too large.", "CodeManagerError"),
                },
            },
        },
        "/file-sync/v1/git/git-receive-pack": {
            "post": {
                "operationId": "gitReceivePack",
                "tags": ["file-sync"],
                "summary": "Always refused: storage is written by deploys only.",
                "security": _PUBLIC,
                "requestBody": {"required": False, **_content(binary, "application/octet-stream")},
                "responses": {"403": _error("Refused.", "CodeManagerError")},
            },
        },
        "/file-sync/v1/latest-commit": {
            "get": {
                "operationId": "latestCommit",
                "tags": ["file-sync"],
                "summary": "Long poll: the code-commit once it differs from `known`.",
                "security": _FILE_SYNC_SECURITY,
                "parameters": [
                    _param("known", "query", {"type": "string"}, "The code-commit the client has."),
                    _param(
                        "timeout",
                        "query",
                        _or_blank({"type": "number"}),
                        "Seconds to hold (capped by `file_sync.long_poll_timeout`).",
                    ),
                ],
                "responses": {
                    "200": _response(
                        "The code-commit and whether it differs from `known`.",
                        _object(
                            ["code-commit", "changed"],
                            {"code-commit": _NULLABLE_STRING, "changed": {"type": "boolean"}},
                        ),
                    ),
                    "400": _error("`timeout` is not a number.", "CodeManagerError"),
                    "401": _FILE_SYNC_401,
                },
            },
        },
        "/file-sync/v1/check-ins": {
            "post": {
                "operationId": "checkIn",
                "tags": ["file-sync"],
                "summary": "A file-sync client reports what its live directory holds.",
                "security": _FILE_SYNC_SECURITY,
                "requestBody": _body(_ref("CheckIn"), "The client's report."),
                "responses": {
                    "200": _response("The check-in as stored.", {"type": "object"}),
                    "400": _error("A malformed check-in.", "CodeManagerError"),
                    "401": _FILE_SYNC_401,
                },
            },
        },
    }


def _page_paths() -> dict[str, Any]:
    """The reads the page needs beyond the two products': environments, audit, whoami."""
    commit_id = {"type": "string", "pattern": "^[0-9a-f]{7,40}$"}
    gate_error_400 = _error("A parameter is unknown, repeated or malformed.", "GateError")
    return {
        "/api/deploys/environments": {
            "get": {
                "operationId": "deployedEnvironments",
                "tags": ["page"],
                "summary": "Each environment: version deployed, branch, when, who, clients.",
                "responses": {
                    "200": _response(
                        "One row per environment with a version, or a deploy queued, "
                        "running or recently failed; `may_roll_back` is the caller's.",
                        _object(
                            ["commit", "environments"],
                            {
                                "commit": _NULLABLE_STRING,
                                "environments": {
                                    "type": "array",
                                    "items": _ref("EnvironmentRow"),
                                },
                            },
                        ),
                    ),
                    **_READ_AUTH,
                    "503": _UNAVAILABLE,
                },
            },
        },
        "/api/audit": {
            "get": {
                "operationId": "auditTrail",
                "tags": ["page"],
                "summary": "The state branch's history, newest first, filtered and paged.",
                "parameters": [
                    _param(
                        "gate",
                        "query",
                        {"type": "string"},
                        "`<group>`, `<group>/<service>` or `<group>/<service>/<environment>`: "
                        "commits that changed such a gate.",
                    ),
                    _param(
                        "environment",
                        "query",
                        {"type": "string"},
                        "Commits that touched this code environment (its deploys, its "
                        "deployed version) or a gate of that environment column.",
                    ),
                    _param("actor", "query", {"type": "string"}, "The `Actor:` trailer, exactly."),
                    _param(
                        "since",
                        "query",
                        {"type": "string"},
                        "ISO 8601 time (UTC unless it says otherwise); inclusive.",
                    ),
                    _param("until", "query", {"type": "string"}, "ISO 8601 time; inclusive."),
                    _param(
                        "limit",
                        "query",
                        {"type": "string"},
                        "Entries per page, 1 to 200 (default 50).",
                    ),
                    _param(
                        "before",
                        "query",
                        _or_blank(commit_id),
                        "Start after this state commit: the `next` of the previous page.",
                    ),
                ],
                "responses": {
                    "200": _response(
                        "A page of entries. `next` is set when more may follow (the page is "
                        "full, or the request's work budget ran out first).",
                        _object(
                            ["commit", "entries", "next", "scanned"],
                            {
                                "commit": _NULLABLE_STRING,
                                "entries": {"type": "array", "items": _ref("AuditEntry")},
                                "next": _NULLABLE_STRING,
                                "scanned": {"type": "integer", "minimum": 0},
                            },
                        ),
                    ),
                    "400": gate_error_400,
                    **_READ_AUTH,
                    "404": _error("`before` is not a commit of the state branch.", "GateError"),
                    "503": _UNAVAILABLE,
                },
            },
        },
        "/api/audit/{commit}": {
            "get": {
                "operationId": "auditCommit",
                "tags": ["page"],
                "summary": "What one state commit changed: each record before, after, diff.",
                "parameters": [
                    _param(
                        "commit",
                        "path",
                        commit_id,
                        "A state commit id (7 to 40 lowercase hex digits).",
                        required=True,
                    )
                ],
                "responses": {
                    "200": _response("The commit's entry and its changes.", _ref("AuditDetail")),
                    "400": _error("Not a commit id.", "GateError"),
                    **_READ_AUTH,
                    "404": _error("No such commit on the state branch.", "GateError"),
                    "503": _UNAVAILABLE,
                },
            },
        },
        "/api/whoami": {
            "get": {
                "operationId": "whoami",
                "tags": ["page"],
                "summary": "Who the token presented acts for, and its permissions.",
                "responses": {
                    "200": _response(
                        "The principal: anonymous without a token (every permission when "
                        "authentication is off).",
                        _object(
                            ["user", "permissions", "token_id", "authentication"],
                            {
                                "user": {"type": "string"},
                                "permissions": {"type": "array", "items": {"type": "string"}},
                                "token_id": _NULLABLE_STRING,
                                "authentication": {"type": "boolean"},
                            },
                        ),
                    ),
                    "401": _error("A token came and is invalid, expired or revoked.", "AuthError"),
                },
            },
        },
    }


def _other_paths() -> dict[str, Any]:
    html: dict[str, Any] = {}
    return {
        "/internal/health": {
            "get": {
                "operationId": "health",
                "tags": ["operations"],
                "summary": "Liveness: the state branch is readable and may be written.",
                "security": _PUBLIC,
                "responses": {
                    "200": _response(
                        "Alive; `X-Gitstate-State` names the state commit seen.",
                        _ref("Ok"),
                        headers={
                            "X-Gitstate-State": {
                                "description": "The state commit, or `none`.",
                                "schema": {"type": "string"},
                            }
                        },
                    ),
                    "503": _response(
                        "The state branch moved back behind gitstate's back (writes are "
                        "refused until an operator acts), or the repository is unusable.",
                        _ref("GateError"),
                    ),
                },
            },
        },
        **{
            path: {
                "get": {
                    "operationId": operation,
                    "tags": ["operations"],
                    "summary": "gatekeeper's status document, with the state commit, the "
                    "deploy workers and the file-sync clients"
                    + (" (HTML for browsers)." if path == "/internal/status" else "."),
                    "responses": {
                        "200": {
                            "description": "The status document; `application.status` is "
                            "OK, WARNING or ERROR.",
                            "content": {
                                "application/json": {"schema": {"type": "object"}},
                                **(
                                    {"text/html": {"schema": {"type": "string"}}}
                                    if path == "/internal/status"
                                    else {}
                                ),
                            },
                        },
                        **_READ_AUTH,
                        "503": _UNAVAILABLE,
                    },
                },
            }
            for path, operation in (
                ("/internal/status", "status"),
                ("/internal/status.json", "statusJson"),
            )
        },
        **{
            path: {
                "get": {
                    "operationId": operation,
                    "tags": ["page"],
                    "summary": "gatekeeper's page path: redirects to the page at `/`, "
                    "keeping the query string.",
                    "security": _PUBLIC,
                    "responses": {
                        "301": {
                            "description": "To `/`.",
                            "headers": {"Location": {"schema": {"type": "string"}}},
                        }
                    },
                },
            }
            for path, operation in (
                ("/gates", "gatekeeperPage"),
                ("/gates/", "gatekeeperPageSlash"),
                ("/index", "gatekeeperIndex"),
            )
        },
        "/metrics": {
            "get": {
                "operationId": "metrics",
                "tags": ["operations"],
                "summary": "Prometheus metrics of every gitstate process.",
                "responses": {
                    "200": {
                        "description": "Prometheus text, or OpenMetrics when `Accept` asks.",
                        "content": {
                            media: {"schema": {}}
                            for media in ("text/plain", "application/openmetrics-text")
                        },
                    },
                    **_READ_AUTH,
                },
            },
        },
        "/openapi.json": {
            "get": {
                "operationId": "openapi",
                "tags": ["operations"],
                "summary": "This document.",
                "security": _PUBLIC,
                "responses": {"200": _response("OpenAPI 3.1.", {"type": "object"})},
            },
        },
        "/": {
            "get": {
                "operationId": "page",
                "tags": ["page"],
                "summary": "The web page (it reads the JSON API with the user's token).",
                "security": _PUBLIC,
                "responses": {
                    "200": _response("The page.", html, media="text/html"),
                    "304": {"description": "`If-None-Match` matched."},
                    "404": _error("The page is not installed.", "GateError"),
                },
            },
        },
        "/static/{name}": {
            "get": {
                "operationId": "staticFile",
                "tags": ["page"],
                "summary": "The page's script, style and images.",
                "security": _PUBLIC,
                "parameters": [
                    _param("name", "path", {"type": "string"}, "A file name.", required=True)
                ],
                "responses": {
                    "200": {
                        "description": "The file.",
                        "content": {
                            media: {"schema": html}
                            for media in ("text/javascript", "text/css", "text/html")
                        }
                        | {media: {"schema": {}} for media in ("image/png", "image/svg+xml")},
                    },
                    "304": {"description": "`If-None-Match` matched."},
                    "404": _error("No such file.", "GateError"),
                },
            },
        },
    }


def build() -> dict[str, Any]:
    """Return the OpenAPI 3.1 document (a fresh copy each call)."""
    schemas = _schemas()
    paths = {
        **_gate_paths(),
        **_code_manager_paths(),
        **_file_sync_paths(),
        **_page_paths(),
        **_other_paths(),
    }
    return copy.deepcopy(
        {
            "openapi": "3.1.0",
            "info": {
                "title": "gitstate",
                "version": gitstate.__version__,
                "summary": "Code Manager's deploy API and gatekeeper's gate API, state in git.",
                "description": (
                    "Errors are JSON: gatekeeper's `{status, reason}` under `/api/`, Code "
                    "Manager's `{kind, msg, details}` under `/code-manager/v1/` and "
                    "`/file-sync/v1/`, both at once for token errors. A method a path does "
                    "not list answers 405 with an `Allow` header, in its family's shape (401 "
                    "first when it would be a write and no token came). No route parses "
                    "request bodies by content type, so none answers 415."
                ),
                "license": {"name": "Apache-2.0", "identifier": "Apache-2.0"},
            },
            "servers": [{"url": "/"}],
            "security": [{"tokenHeader": []}, {"tokenQuery": []}, {}],
            "tags": [
                {"name": "gates", "description": "gatekeeper 4.0's API."},
                {"name": "code-manager", "description": "Puppet Code Manager's API."},
                {"name": "file-sync", "description": "File sync's transport and reports."},
                {"name": "page", "description": "The web page."},
                {"name": "operations", "description": "Probes and this document."},
            ],
            "paths": paths,
            "components": {
                "schemas": schemas,
                "securitySchemes": {
                    "tokenHeader": {
                        "type": "apiKey",
                        "in": "header",
                        "name": "X-Authentication",
                        "description": (
                            "A gitstate token. Needed for writes when `auth.enabled`, for reads "
                            "too with `auth.read_requires_token`."
                        ),
                    },
                    "tokenQuery": {
                        "type": "apiKey",
                        "in": "query",
                        "name": "token",
                        "description": "The same token as `?token=` (as Code Manager takes it).",
                    },
                    "fileSyncTokenHeader": {
                        "type": "apiKey",
                        "in": "header",
                        "name": "X-Authentication",
                        "description": "The shared `file_sync.token`.",
                    },
                    "fileSyncTokenQuery": {
                        "type": "apiKey",
                        "in": "query",
                        "name": "token",
                        "description": "The shared `file_sync.token` as `?token=`.",
                    },
                },
            },
        }
    )


def routed(app: falcon.asgi.App) -> dict[str, Any]:
    """Return the document narrowed to the paths ``app`` routes.

    A route being added or removed by another module (``/metrics`` is
    optional) then never leaves the served document describing a path the
    app does not have.
    """
    document = build()
    router = app._router
    for path in list(document["paths"]):
        concrete = re.sub(r"\{[^}]+\}", "x", path)
        found = router.find(concrete)
        if found is None or found[3] != path:
            del document["paths"][path]
    return document


class OpenAPIResource:
    """``GET /openapi.json``: the document, public like the page."""

    auth_policy = "public"

    def __init__(self) -> None:
        self._body = b"{}"

    def publish(self, document: dict[str, Any]) -> None:
        """Serve ``document`` from now on."""
        self._body = json.dumps(document, indent=1).encode()

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        """Send the document."""
        resp.content_type = falcon.MEDIA_JSON
        resp.cache_control = ["no-cache"]
        resp.data = self._body


def add_routes(app: falcon.asgi.App) -> None:
    """Mount ``/openapi.json``; call it after every other route is added."""
    resource = OpenAPIResource()
    app.add_route("/openapi.json", resource)
    resource.publish(routed(app))
