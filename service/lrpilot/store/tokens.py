"""API tokens: the only code that reads or writes the tokens table."""

from __future__ import annotations

import sqlalchemy as sa
from sqlmodel import col, select

from lrpilot.store.records import Token
from lrpilot.store.runs import Store
from lrpilot.store.tables import TokenRow


class NameTaken(Exception):
    """A token of that name exists already."""


def _token(row: TokenRow) -> Token:
    assert row.id is not None
    return Token(
        row.id, row.name, row.project, row.role, row.created_at, row.expires_at, row.revoked_at
    )


class Tokens:
    """The tokens table, over a store's engine (its bounded waits, its 503s)."""

    def __init__(self, store: Store) -> None:
        self._store = store

    def create(
        self,
        name: str,
        project: str,
        role: str,
        hashed: str,
        created_at: str,
        expires_at: str | None,
    ) -> Token:
        """Store a new token (only ``hashed``, its secret's hash); ``NameTaken`` if the name is."""
        with self._store.session() as s:
            if s.exec(select(TokenRow).where(TokenRow.name == name)).first() is not None:
                raise NameTaken(f"a token named {name!r} exists already")
            row = TokenRow(
                name=name,
                project=project,
                role=role,
                token_hash=hashed,
                created_at=created_at,
                expires_at=expires_at,
            )
            s.add(row)
            try:
                s.commit()
            except sa.exc.IntegrityError as exc:  # another process took the name meanwhile
                raise NameTaken(f"a token named {name!r} exists already") from exc
            s.refresh(row)
            return _token(row)

    def all(self, project: str | None = None) -> list[Token]:
        """Every token (of ``project``), oldest first."""
        with self._store.session() as s:
            q = select(TokenRow).order_by(col(TokenRow.id))
            if project is not None:
                q = q.where(TokenRow.project == project)
            return [_token(r) for r in s.exec(q)]

    def find(self, hashed: str) -> Token | None:
        """The token whose secret hashes to ``hashed``, revoked or expired too."""
        with self._store.session() as s:
            row = s.exec(select(TokenRow).where(TokenRow.token_hash == hashed)).first()
            return None if row is None else _token(row)

    def named(self, name: str) -> Token | None:
        with self._store.session() as s:
            row = s.exec(select(TokenRow).where(TokenRow.name == name)).first()
            return None if row is None else _token(row)

    def exist(self) -> bool:
        """Whether any token was ever created (a revoked one counts: revoking every token
        must never turn authentication off)."""
        with self._store.session() as s:
            return s.exec(select(TokenRow.id).limit(1)).first() is not None

    def revoke(self, name_or_id: str, at: str, project: str | None = None) -> Token | None:
        """Revoke the token of that name (or, failing that, id) (of ``project``); the token as
        it now stands, None if there is none. A token revoked already keeps its first
        revocation time."""
        with self._store.session() as s:
            row = s.exec(select(TokenRow).where(TokenRow.name == name_or_id)).first()
            if row is None and name_or_id.isdigit():
                row = s.get(TokenRow, int(name_or_id))
            if row is None or (project is not None and row.project != project):
                return None
            if row.revoked_at is None:
                row.revoked_at = at
                s.add(row)
                s.commit()
                s.refresh(row)
            return _token(row)
