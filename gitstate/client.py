"""A small HTTP client for gitstate's API, used by the CLI.

Only the standard library, so ``gitstate deploy`` works wherever gitstate is
installed. Tokens are read from a file, as ``puppet code`` does, and sent in
``X-Authentication``.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from gitstate.config import DEFAULT_PORT
from gitstate.errors import GitStateError

DEFAULT_SERVICE_URL = f"http://127.0.0.1:{DEFAULT_PORT}"
DEFAULT_TOKEN_FILE = "~/.gitstate/token"
#: Environment variables the client commands read for their defaults.
URL_ENV = "GITSTATE_URL"
TOKEN_FILE_ENV = "GITSTATE_TOKEN_FILE"


class ClientError(GitStateError):
    """The service could not be reached or answered with an error.

    Attributes:
        status: the HTTP status, or None when nothing answered.
        body: the decoded error body, when there was one.
    """

    def __init__(self, message: str, status: int | None = None, body: Any = None) -> None:
        self.status = status
        self.body = body
        super().__init__(message)


class TokenMissing(ClientError):
    """The server wants a token and the token file holds none.

    The plain answer (``401 Route requires authentication``) does not say
    that the client sent nothing, nor where it looked: this does, with the
    command that makes a token.

    Attributes:
        token_file: the file looked at, as given.
    """

    def __init__(self, token_file: str, why: str, status: int, body: Any) -> None:
        self.token_file = token_file
        shown = token_file
        expanded = str(Path(token_file).expanduser())
        if expanded != token_file:
            shown = f"{token_file} ({expanded})"
        super().__init__(
            f"no token sent: {shown} {why}, and the server needs one for this.\n"
            "  Make one on the server (its config names the datadir):\n"
            f"    gitstate token create --config gitstate.yaml --user $USER "
            f"--permission 'deploy:*' --out {token_file}\n"
            f"  or name another file with --token-file FILE or {TOKEN_FILE_ENV}=FILE "
            "(gitstate demo keeps its admin token in DIR/token).",
            status,
            body,
        )


def default_service_url() -> str:
    """Return ``$GITSTATE_URL``, or the local server's URL when it is unset."""
    return os.environ.get(URL_ENV) or DEFAULT_SERVICE_URL


def default_token_file() -> str:
    """Return ``$GITSTATE_TOKEN_FILE``, or ``~/.gitstate/token`` when it is unset."""
    return os.environ.get(TOKEN_FILE_ENV) or DEFAULT_TOKEN_FILE


class Client:
    """Talk to one gitstate server.

    Args:
        service_url: the server's base URL; a trailing ``/code-manager`` (as
            in ``puppet code``'s config) is accepted and ignored.
        token_file: file holding a token; missing means no token is sent.
        timeout: seconds to wait for an answer.
    """

    def __init__(
        self,
        service_url: str = DEFAULT_SERVICE_URL,
        token_file: str | None = DEFAULT_TOKEN_FILE,
        timeout: float = 900.0,
    ) -> None:
        self.base = service_url.rstrip("/").removesuffix("/code-manager")
        self.timeout = timeout
        self.token_file = token_file
        self.token = None
        #: Why no token is sent (None: one is, or no file was named).
        self.no_token: str | None = None
        if token_file:
            path = Path(token_file).expanduser()
            if path.is_file():
                self.token = path.read_text(encoding="utf-8").strip() or None
                if self.token is None:
                    self.no_token = "is empty"
            else:
                self.no_token = "does not exist"

    def request(self, method: str, path: str, body: Any = None) -> Any:
        """Send one request; return the decoded JSON answer.

        Raises:
            ClientError: the server is unreachable or answered 4xx/5xx.
        """
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.base + path, data=data, method=method)
        request.add_header("Accept", "application/json")
        if data is not None:
            request.add_header("Content-Type", "application/json")
        if self.token:
            request.add_header("X-Authentication", self.token)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as answer:
                return json.loads(answer.read() or b"null")
        except urllib.error.HTTPError as ex:
            payload = ex.read()
            try:
                decoded = json.loads(payload)
            except ValueError:
                decoded = payload.decode(errors="replace")
            if ex.code == 401 and self.token_file and self.no_token:
                raise TokenMissing(self.token_file, self.no_token, ex.code, decoded) from ex
            message = (
                decoded.get("msg") or decoded.get("reason") if isinstance(decoded, dict) else None
            )
            raise ClientError(f"{ex.code} {message or decoded}", ex.code, decoded) from ex
        except (urllib.error.URLError, OSError) as ex:
            reason = getattr(ex, "reason", ex)
            raise ClientError(f"cannot reach {self.base}: {reason}") from ex
