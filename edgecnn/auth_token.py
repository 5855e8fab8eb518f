"""The bearer token shared by the server (--auth-token-file) and its clients: reading the
token file and the `authorization` metadata it travels in. No gRPC or client imports here, so
the server can use it without depending on the client."""

from __future__ import annotations

from pathlib import Path

METADATA_KEY = "authorization"


def read_token(path: Path | str) -> str:
    """The token in a file (surrounding whitespace dropped); ValueError when unreadable or empty."""
    try:
        token = Path(path).read_text().strip()
    except OSError as exc:
        raise ValueError(f"auth token file {path}: cannot read it ({exc.strerror})") from None
    if not token:
        raise ValueError(f"auth token file {path}: empty (expected one bearer token)")
    return token


def token_file_option(path: Path | str | None) -> str | None:
    """The token of an --auth-token-file option, or None when the option is not given."""
    return read_token(path) if path else None


def bearer(token: str) -> str:
    """The metadata value for `token`: ``Bearer <token>``."""
    return f"Bearer {token}"


def auth_metadata(token: str | None) -> tuple[tuple[str, str], ...]:
    """gRPC call metadata carrying `token`, or none."""
    return ((METADATA_KEY, bearer(token)),) if token else ()
