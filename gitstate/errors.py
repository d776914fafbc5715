"""The root of gitstate's exception tree, and what an error means to a client.

Each concrete error is defined next to the code that raises it and carries
the data a caller needs (a path, a ref, a gate). What the error *means* is
declared on its class, as plain data that names no web framework:

``status``
    an HTTP-like status number: 4xx when the caller asked for something
    that cannot be done, 5xx when gitstate cannot answer now. The default,
    500, says "not meant for clients": such an error is logged and answered
    as an internal error, its message kept out of the answer.
``kind``
    Code Manager's name for the failure (``puppetlabs.code-manager/...``,
    ``puppetlabs.rbac/...``), which its clients branch on.
``retry_after``
    seconds after which the same request may well succeed, or None.
``challenge``
    the authentication scheme a client should answer with, or None.
``public_fields``
    which of the error's data a client may see: pairs of (key in the
    answer, attribute), such as ``(("id", "deploy_id"),)``.

Both ``status`` and ``kind`` are read from the class (:func:`status_of`,
:func:`kind_of`): a few errors keep an instance attribute of the same name
with another meaning (the name kind of :class:`InvalidName`, the remote
status of :class:`ClientError`). ``gitstate.web`` turns any error into an
HTTP answer from these in one place.
"""

from __future__ import annotations

from typing import Any

#: Every Code Manager error kind starts with this.
KIND_PREFIX = "puppetlabs.code-manager/"
BAD_REQUEST = KIND_PREFIX + "bad-request"
FORBIDDEN = KIND_PREFIX + "forbidden"
NOT_FOUND = KIND_PREFIX + "not-found"
CONFLICT = KIND_PREFIX + "conflict"
UNAVAILABLE = KIND_PREFIX + "unavailable"
INTERNAL_ERROR = KIND_PREFIX + "internal-error"


class GitStateError(Exception):
    """Base class of every error gitstate raises on purpose."""

    #: What kind of failure this is, as an HTTP-like status number.
    status: int = 500
    #: Code Manager's kind of the failure.
    kind: str = INTERNAL_ERROR
    #: Seconds after which a retry may succeed; None: no advice.
    retry_after: int | None = None
    #: The authentication challenge a client should answer; None: none.
    challenge: str | None = None
    #: (key in the answer, attribute) of the data a client may act on.
    public_fields: tuple[tuple[str, str], ...] = ()

    def public_message(self) -> str:
        """Return what a client is told went wrong (the message by default)."""
        return str(self)

    def public_details(self) -> Any:
        """Return the data a client may act on beside the message, or None.

        Code Manager's answers carry it as ``details``; gatekeeper's, whose
        errors are flat, as keys of the error object itself (so it is a
        mapping for the errors gatekeeper's endpoints raise). By default
        the attributes :attr:`public_fields` names.
        """
        if not self.public_fields:
            return None
        return {key: getattr(self, attribute) for key, attribute in self.public_fields}


def status_of(error: BaseException) -> int:
    """Return the status ``error``'s class declares (500 for any other exception)."""
    return type(error).status if isinstance(error, GitStateError) else 500


def kind_of(error: BaseException) -> str:
    """Return the Code Manager kind ``error``'s class declares."""
    return type(error).kind if isinstance(error, GitStateError) else INTERNAL_ERROR
