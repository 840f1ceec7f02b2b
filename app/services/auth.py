"""Bearer tokens and per-namespace roles (viewer < operator < admin)."""

from __future__ import annotations

import hashlib
import secrets
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

from sqlalchemy.orm import Session

from app.clock import utc_now
from app.db import TOKENS_CHANNEL, Hub, signal
from app.errors import AlreadyExists, Conflict, FieldError, Forbidden, NotFound, Unauthorized
from app.models import GrantRow, TokenRow
from app.repositories import auth as repo
from app.schemas.auth import Role

ALL_NAMESPACES = "*"
BOOTSTRAP_NAME = "bootstrap-admin"
TOKEN_PREFIX = "crl_"


def digest(secret: str) -> str:
    # Tokens are 256 random bits, so a fast hash suffices (no password stretching needed).
    return hashlib.sha256(secret.encode()).hexdigest()


def new_secret() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


@dataclass(frozen=True)
class Principal:
    name: str
    grants: dict[str, Role] = field(default_factory=dict)

    def role_in(self, namespace: str) -> Role | None:
        roles = [r for ns, r in self.grants.items() if ns in (namespace, ALL_NAMESPACES)]
        return max(roles) if roles else None

    @property
    def cluster_role(self) -> Role | None:
        return self.grants.get(ALL_NAMESPACES)

    def require(self, role: Role, namespace: str | None, *, hide: bool = False) -> None:
        """Allow the call or raise: 404 where the caller may not see the namespace and `hide` is set
        (objects), 403 otherwise."""
        held = self.cluster_role if namespace is None else self.role_in(namespace)
        if held is not None and held >= role:
            return
        scope = "cluster-wide" if namespace is None else f"in namespace {namespace!r}"
        if held is None and hide:
            raise NotFound("not found")
        raise Forbidden(f"{self.name!r} needs role {role.name} {scope}")

    def require_write(self, read: Role, write: Role, namespace: str | None) -> None:
        """A write to an object: 404 if the caller cannot even see it, 403 if it can but may not write."""
        self.require(read, namespace, hide=True)
        self.require(write, namespace)


def authenticate(session: Session, authorization: str | None) -> Principal:
    if not authorization:
        raise Unauthorized(
            "an Authorization: Bearer <token> header is required", headers={"WWW-Authenticate": "Bearer"}
        )
    scheme, _, secret = authorization.partition(" ")
    if scheme.lower() != "bearer" or not secret.strip():
        raise Unauthorized(
            "the Authorization header must be 'Bearer <token>'", headers={"WWW-Authenticate": "Bearer"}
        )
    token = repo.token_by_digest(session, digest(secret.strip()))
    if token is None:
        raise Unauthorized(
            "the token is not valid", headers={"WWW-Authenticate": 'Bearer error="invalid_token"'}
        )
    return Principal(token.name, {g.namespace: Role[g.role] for g in token.grants})


def create_token(session: Session, name: str, grants: dict[str, Role]) -> tuple[TokenRow, str]:
    if repo.token_by_name(session, name) is not None:
        raise AlreadyExists(f"token {name!r} already exists")
    secret = new_secret()
    row = TokenRow(id=str(uuid.uuid4()), name=name, digest=digest(secret), created_at=utc_now())
    repo.add_token(session, row, [GrantRow(namespace=ns, role=r.name) for ns, r in grants.items()])
    signal(session, TOKENS_CHANNEL)
    return row, secret


def list_tokens(session: Session) -> list[TokenRow]:
    return repo.list_tokens(session)


def delete_token(session: Session, name: str) -> None:
    """Revoke a token, never the bootstrap admin (it is how an operator gets back in) nor the last
    cluster admin: either would lock every client out until a restart."""
    row = repo.token_by_name(session, name)
    if row is None:
        raise NotFound(f"token {name!r} not found")
    if name == BOOTSTRAP_NAME:
        raise Conflict(
            f"token {name!r} is the bootstrap admin token and cannot be deleted; rotate it by changing "
            "CORRAL_ADMIN_TOKEN",
            [FieldError("name", "is the bootstrap admin token")],
        )
    if is_cluster_admin(row):
        # Locked, so two admins revoking each other at once cannot both pass this check.
        admins = [t for t in repo.lock_tokens(session) if is_cluster_admin(t)]
        if all(t.name == name for t in admins):
            raise Conflict(
                f"token {name!r} is the last cluster admin token and cannot be deleted",
                [FieldError("name", "is the last cluster admin token")],
            )
    repo.delete_token(session, row)
    signal(session, TOKENS_CHANNEL)  # every API process forgets it now, not when its cache ages


def is_cluster_admin(token: TokenRow) -> bool:
    return any(g.namespace == ALL_NAMESPACES and g.role == Role.admin.name for g in token.grants)


def bootstrap_admin(session: Session, secret: str | None) -> str | None:
    """Make `secret` (CORRAL_ADMIN_TOKEN) a cluster admin token. With no secret and no tokens at all,
    mint one and return it so the caller can hand it to the operator; otherwise return None."""
    if secret:
        row = repo.token_by_name(session, BOOTSTRAP_NAME)
        if row is None:
            row = TokenRow(
                id=str(uuid.uuid4()), name=BOOTSTRAP_NAME, digest=digest(secret), created_at=utc_now()
            )
            repo.add_token(session, row, [GrantRow(namespace=ALL_NAMESPACES, role=Role.admin.name)])
        elif row.digest != digest(secret):
            row.digest = digest(secret)  # the environment is the source of truth for this one token
            signal(session, TOKENS_CHANNEL)
        return None
    if repo.list_tokens(session):
        return None
    _, minted = create_token(session, BOOTSTRAP_NAME, {ALL_NAMESPACES: Role.admin})
    return minted


class PrincipalCache:
    """Authenticated principals by token digest, so a request costs no database round trip for its token.

    A token write anywhere signals TOKENS_CHANNEL (Postgres NOTIFY across processes, the hub within one):
    an entry is good only while that channel's counter is what it was before the entry was looked up, so a
    revocation is honoured at once. MAX_AGE bounds what no signal can reach (API processes sharing a SQLite
    file, or a Postgres LISTEN connection being re-established)."""

    MAX_AGE = 2.0
    MAX_ENTRIES = 10_000

    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self._entries: dict[str, tuple[Principal, int, float]] = {}
        self._lock = threading.Lock()

    def principal(self, authorization: str | None) -> Principal | None:
        """The cached principal for this Authorization header, or None (then call `fill`)."""
        key = digest(authorization or "")
        with self._lock:
            found = self._entries.get(key)
        if found is None:
            return None
        principal, seen, at = found
        if seen != self.hub.counter(TOKENS_CHANNEL) or time.monotonic() - at > self.MAX_AGE:
            return None
        return principal

    def fill(self, authorization: str | None, lookup: Callable[[], Principal]) -> Principal:
        seen = self.hub.counter(TOKENS_CHANNEL)  # read first: a revocation during the lookup voids the entry
        principal = lookup()  # raises for a bad token: refusals are never cached
        with self._lock:
            if len(self._entries) >= self.MAX_ENTRIES:
                self._entries.clear()
            self._entries[digest(authorization or "")] = (principal, seen, time.monotonic())
        return principal
