"""Tokens and permissions, kept in the state branch.

A token is 256 random bits, shown once when it is issued. Only its SHA-256
is stored, at ``tokens/<2 hex>/<sha256>.yaml``, so a copy of the state
repository (a backup, a mirror) holds nothing that authenticates anyone.
Issuing and revoking are commits like every other change, so ``git log --
tokens/`` says who gave whom which rights and when. A plain hash is enough
here: the secret has 256 bits of entropy, so there is nothing to brute-force
that a slow password hash would protect.

Permissions are strings:

``admin``
    everything, including issuing and revoking tokens;
``deploy:<environment>`` / ``deploy:*``
    deploy that environment (Code Manager's ``environment:deploy_code``);
``gates:<group>`` / ``gates:*``
    change the gates of a group (open, close, tickets, create, delete).

Errors carry Code Manager's RBAC kinds (``puppetlabs.rbac/...``) and the
HTTP status they map to.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
import secrets
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any

from gitstate.base.times import duration, now_iso, parse_iso
from gitstate.errors import GitStateError
from gitstate.settings import AuthSettings
from gitstate.store.branch import Draft, Identity, Store

SCHEMA_VERSION = 1
TOKEN_PREFIX = "gst_"
_PERMISSION = re.compile(
    r"\A(admin|deploy:(\*|[A-Za-z0-9_]{1,255})|gates:(\*|[A-Za-z0-9_-]{1,100}))\Z"
)
_USER = re.compile(r"\A[A-Za-z0-9_.@+-]{1,100}\Z")
_ID = re.compile(r"\A[0-9a-f]{8,64}\Z")
#: Longest lifetime a token may be given (Code Manager's limit too).
MAX_LIFETIME = 10 * 365 * 86400.0


class AuthError(GitStateError):
    """Authentication or authorisation failed.

    Attributes:
        kind: the Code Manager/RBAC error kind.
        status: the HTTP status code it maps to.
    """

    kind = "puppetlabs.rbac/user-unauthenticated"
    status = 401


class Unauthenticated(AuthError):
    """No token was presented where one is required."""

    def __init__(self) -> None:
        super().__init__("Route requires authentication")


class InvalidToken(AuthError):
    """The token presented is not one gitstate issued."""

    kind = "puppetlabs.rbac/invalid-token"

    def __init__(self) -> None:
        super().__init__("The provided token is not valid.")


class TokenExpired(AuthError):
    """The token's lifetime is over."""

    kind = "puppetlabs.rbac/token-expired"

    def __init__(self, token_id: str, expired_at: str) -> None:
        self.token_id = token_id
        self.expired_at = expired_at
        super().__init__("The provided token has expired.")


class TokenRevoked(AuthError):
    """The token was revoked."""

    kind = "puppetlabs.rbac/token-revoked"

    def __init__(self, token_id: str) -> None:
        self.token_id = token_id
        super().__init__("Authentication token has been revoked.")


class PermissionDenied(AuthError):
    """The token's user lacks the permission an action needs.

    Attributes:
        user: who asked.
        permission: the permission that was missing.
    """

    kind = "puppetlabs.rbac/permission-denied"
    status = 403

    def __init__(self, user: str, permission: str, what: str) -> None:
        self.user = user
        self.permission = permission
        super().__init__(f"{user} is not allowed to {what} (needs permission '{permission}')")


class TokenRequestError(GitStateError, ValueError):
    """A token could not be issued or revoked as asked."""


@dataclasses.dataclass(frozen=True)
class Principal:
    """Who a request acts for, and what they may do."""

    user: str
    permissions: frozenset[str]
    token_id: str | None = None

    def allows(self, permission: str) -> bool:
        """Tell whether this principal holds ``permission`` (or a wildcard for it)."""
        if "admin" in self.permissions or permission in self.permissions:
            return True
        kind, _, _ = permission.partition(":")
        return f"{kind}:*" in self.permissions

    def require(self, permission: str, what: str) -> None:
        """Raise :class:`PermissionDenied` unless :meth:`allows` ``permission``."""
        if not self.allows(permission):
            raise PermissionDenied(self.user, permission, what)


#: The principal of requests when authentication is turned off.
ANONYMOUS = Principal("anonymous", frozenset({"admin"}))


@dataclasses.dataclass(frozen=True)
class Issued:
    """A newly issued token: the secret is only ever available here."""

    token: str
    token_id: str
    user: str
    expires_at: str | None
    permissions: tuple[str, ...]


def token_hash(token: str) -> str:
    """Return the hex SHA-256 under which a token is stored."""
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def _path(digest: str) -> str:
    return f"tokens/{digest[:2]}/{digest}.yaml"


def check_permissions(permissions: Iterable[str]) -> tuple[str, ...]:
    """Validate permission strings; return them sorted and unique.

    Raises:
        TokenRequestError: one of them is not a permission.
    """
    checked = sorted(set(permissions))
    for permission in checked:
        if not _PERMISSION.match(permission):
            raise TokenRequestError(
                f"unknown permission {permission!r}: use admin, deploy:<env>, deploy:*, "
                "gates:<group> or gates:*"
            )
    return tuple(checked)


#: Path prefixes of each API family whose anonymous reads
#: ``auth.anonymous_reads`` decides.
READ_FAMILIES: tuple[tuple[str, str], ...] = (
    ("/code-manager/", "code_manager"),
    # gitstate's own views of deploys, and the audit trail (which also
    # tells who holds which tokens), are read like Code Manager's.
    ("/api/deploys/", "code_manager"),
    ("/api/audit", "code_manager"),
    ("/api/gates", "gates"),
    ("/api/tickets", "gates"),
    ("/api/holidays", "gates"),
    ("/internal/status", "gates"),
)


def read_needs_token(settings: AuthSettings, path: str) -> bool:
    """Tell whether a read (GET, HEAD, OPTIONS) of ``path`` needs a token.

    ``auth.read_requires_token`` makes every read need one; otherwise Code
    Manager's paths and gatekeeper's follow ``auth.anonymous_reads``, and
    other reads (``/api/watch``, ``/metrics``) are open.
    """
    if settings.read_requires_token:
        return True
    for prefix, family in READ_FAMILIES:
        if path.startswith(prefix):
            return not getattr(settings.anonymous_reads, family)
    return False


class Tokens:
    """Issue, list, revoke and verify tokens."""

    def __init__(
        self,
        store: Store,
        settings: AuthSettings | None = None,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.settings = settings or AuthSettings()
        self.clock = clock

    def authenticate(self, token: str | None, *, required: bool = True) -> Principal:
        """Return who a request acts for, as the settings demand.

        With authentication off everyone is :data:`ANONYMOUS`. Otherwise a
        presented token must be valid; a missing one is refused only when
        ``required``.

        Raises:
            AuthError: the token is missing (and required), unknown,
                revoked or expired.
        """
        if not self.settings.enabled:
            return ANONYMOUS
        if not token and not required:
            return Principal("anonymous", frozenset())
        return self.verify(token)

    def issue(
        self,
        user: str,
        *,
        permissions: Iterable[str],
        lifetime: Any = "1h",
        description: str = "",
        actor: str,
    ) -> Issued:
        """Create a token for ``user``; the secret is returned, never stored.

        Args:
            user: whom the token acts for (the actor of their commits).
            permissions: what it may do (see the module docstring).
            lifetime: seconds or ``"30m"``/``"1h"``/``"90d"``; 0 or None
                means it never expires.
            description: a note kept with the token.
            actor: who issues it.

        Raises:
            TokenRequestError: a bad user name, permission or lifetime.
        """
        if not _USER.match(user or ""):
            raise TokenRequestError(f"user name {user!r} must be 1-100 letters, digits or ._@+-")
        allowed = check_permissions(permissions)
        seconds = 0.0 if lifetime in (None, 0, "0") else _lifetime(lifetime)
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        digest = token_hash(token)
        expires = now_iso(lambda: self.clock() + seconds) if seconds else None
        record = {
            "schema_version": SCHEMA_VERSION,
            "id": digest[:12],
            "user": user,
            "permissions": list(allowed),
            "created_at": now_iso(self.clock),
            "created_by": actor,
            "expires_at": expires,
            "revoked_at": None,
            "description": description[:200],
        }

        def change(draft: Draft) -> None:
            draft.put(_path(digest), record)
            until = f"until {expires}" if expires else "without expiry"
            rights = ", ".join(allowed) or "no permissions"
            draft.subject = f"{actor} issued token {digest[:12]} for {user} ({rights}; {until})"

        self.store.transact(
            change, subject="issue token", operation="token.issue", identity=Identity(actor)
        )
        return Issued(token, digest[:12], user, expires, allowed)

    def list(self) -> list[dict[str, Any]]:
        """Return every token's record (hash, never the secret), oldest first."""
        records = [record for _path_, record in self.store.snapshot().records("tokens")]
        return sorted(records, key=lambda record: (record["created_at"], record["id"]))

    def revoke(self, token_id: str, *, actor: str) -> dict[str, Any]:
        """Revoke the token whose id (a prefix of its hash) is ``token_id``.

        Raises:
            TokenRequestError: no token, or more than one, has that id.
        """
        if not _ID.match(token_id):
            raise TokenRequestError(f"token id {token_id!r} must be 8 or more hex digits")

        def change(draft: Draft) -> dict[str, Any]:
            matches = [
                path
                for path in draft.paths(f"tokens/{token_id[:2]}")
                if path.rsplit("/", 1)[1].startswith(token_id)
            ]
            if len(matches) != 1:
                raise TokenRequestError(f"{len(matches)} tokens have the id {token_id}")
            record = draft.get(matches[0])
            assert record is not None
            if record.get("revoked_at") is None:
                record["revoked_at"] = now_iso(self.clock)
                record["revoked_by"] = actor
                draft.put(matches[0], record)
            draft.subject = f"{actor} revoked token {record['id']} of {record['user']}"
            return record

        return self.store.transact(
            change, subject="revoke token", operation="token.revoke", identity=Identity(actor)
        ).value

    def verify(self, token: str | None) -> Principal:
        """Return who ``token`` acts for.

        Raises:
            Unauthenticated: no token.
            InvalidToken: not a token gitstate issued.
            TokenRevoked: revoked.
            TokenExpired: past its lifetime.
        """
        if not token:
            raise Unauthenticated()
        if len(token) > 200:
            raise InvalidToken()
        record = self.store.snapshot().get(_path(token_hash(token)))
        if record is None:
            raise InvalidToken()
        if record.get("revoked_at"):
            raise TokenRevoked(record["id"])
        expires = record.get("expires_at")
        if expires and parse_iso(expires) <= datetime.fromtimestamp(self.clock(), UTC):
            raise TokenExpired(record["id"], expires)
        return Principal(record["user"], frozenset(record.get("permissions", [])), record["id"])


#: A lifetime as the command line takes it: a number and a unit, as
#: ``puppet access login --lifetime`` does (``5m``, ``1h``, ``2d``, ``1y``).
_LIFETIME = re.compile(r"(\d+(?:\.\d+)?)\s*([smhdy])")
_LIFETIME_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "y": 365 * 86400}


def parse_lifetime(text: str) -> float:
    """Parse a token lifetime given by a person: ``30m``, ``12h``, ``7d``, ``1y``, ``300s``.

    A bare number is refused rather than guessed at (``--lifetime 5`` once
    meant five seconds); ``0`` (or ``never``) means the token never expires
    and returns 0.

    Raises:
        TokenRequestError: no unit, an unknown unit, or out of range.
    """
    value = text.strip().lower()
    if value in ("0", "never"):
        return 0.0
    match = _LIFETIME.fullmatch(value)
    if match is None:
        bare = value.replace(".", "", 1).isdigit()
        raise TokenRequestError(
            f"lifetime {text!r} "
            + ("has no unit" if bare else "is not a number with a unit")
            + ": use s (seconds), m (minutes), h (hours), d (days) or y (years), "
            "e.g. 30m, 12h, 7d, 1y or 300s; 0 means it never expires"
        )
    return _lifetime(float(match[1]) * _LIFETIME_UNITS[match[2]])


def _lifetime(value: Any) -> float:
    try:
        seconds = duration(value)
    except ValueError as ex:
        raise TokenRequestError(str(ex)) from ex
    if seconds <= 0 or seconds > MAX_LIFETIME:
        raise TokenRequestError(f"lifetime must be between 1 second and 10 years, got {value!r}")
    return seconds
