"""The baseline of bench/controlplane.py: the smallest honest FastAPI + SQLAlchemy app doing what Corral's API
does per request at its core (insert an object with a JSON spec, read one by namespace and name, list a page
of 100), on the same database, with a bearer token checked against a table, one process.

Run: python -m bench.minimal_app DATABASE_URL PORT
"""

from __future__ import annotations

import sys
import uuid
from datetime import UTC, datetime
from typing import Any

import uvicorn
from fastapi import FastAPI, Header, HTTPException, Request
from sqlalchemy import JSON, DateTime, String, create_engine, select
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

TOKEN = "minimal-token"


class Base(DeclarativeBase):
    pass


class ObjectRow(Base):
    __tablename__ = "objects"
    namespace: Mapped[str] = mapped_column(String(63), primary_key=True)
    name: Mapped[str] = mapped_column(String(63), primary_key=True)
    uid: Mapped[str] = mapped_column(String(36))
    spec: Mapped[dict[str, Any]] = mapped_column(JSON().with_variant(JSONB(), "postgresql"))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class TokenRow(Base):
    __tablename__ = "tokens"
    secret: Mapped[str] = mapped_column(String(100), primary_key=True)


def shown(row: ObjectRow) -> dict[str, Any]:
    return {
        "metadata": {
            "namespace": row.namespace,
            "name": row.name,
            "uid": row.uid,
            "creationTimestamp": row.created_at.isoformat(),
        },
        "spec": row.spec,
    }


def build(url: str) -> FastAPI:
    engine = create_engine(url, pool_size=20, max_overflow=10)
    Base.metadata.drop_all(engine)
    Base.metadata.create_all(engine)
    sessions = sessionmaker(engine, expire_on_commit=False)
    with sessions.begin() as session:
        session.add(TokenRow(secret=TOKEN))
    app = FastAPI()

    def authorized(session: Session, authorization: str | None) -> None:
        secret = (authorization or "").removeprefix("Bearer ")
        if session.get(TokenRow, secret) is None:
            raise HTTPException(401)

    @app.post("/v1/namespaces/{namespace}/objects", status_code=201)
    def create(namespace: str, request: Request, authorization: str | None = Header(None)) -> dict[str, Any]:
        body = request.state.body
        with sessions.begin() as session:
            authorized(session, authorization)
            row = ObjectRow(
                namespace=namespace,
                name=body["metadata"]["name"],
                uid=str(uuid.uuid4()),
                spec=body.get("spec") or {},
                created_at=datetime.now(UTC),
            )
            session.add(row)
        return shown(row)

    @app.middleware("http")
    async def read_body(request: Request, call_next: Any) -> Any:
        if request.method == "POST":
            request.state.body = await request.json()
        return await call_next(request)

    @app.get("/v1/namespaces/{namespace}/objects/{name}")
    def get(namespace: str, name: str, authorization: str | None = Header(None)) -> dict[str, Any]:
        with sessions() as session:
            authorized(session, authorization)
            row = session.get(ObjectRow, (namespace, name))
            if row is None:
                raise HTTPException(404)
            return shown(row)

    @app.get("/v1/namespaces/{namespace}/objects")
    def list_(namespace: str, limit: int = 100, authorization: str | None = Header(None)) -> dict[str, Any]:
        with sessions() as session:
            authorized(session, authorization)
            rows = session.scalars(
                select(ObjectRow)
                .where(ObjectRow.namespace == namespace)
                .order_by(ObjectRow.name)
                .limit(limit)
            )
            return {"items": [shown(row) for row in rows]}

    return app


if __name__ == "__main__":
    uvicorn.run(build(sys.argv[1]), host="127.0.0.1", port=int(sys.argv[2]), log_level="warning")
