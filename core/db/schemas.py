"""A PostgreSQL schema of its own: a fresh, empty database for a test, a benchmark or a server, in one database.

The schema is chosen per connection by search_path in the URL, so every engine built from the URL (the API's
workers, the migrations, a test's engine) sees only its tables.
"""
from __future__ import annotations

import uuid

from sqlalchemy import create_engine, text


def with_search_path(url: str, schema: str) -> str:
    """url with its connections' search_path set to schema."""
    return url + ("&" if "?" in url else "?") + f"options=-csearch_path%3D{schema}"


class PrivateSchema:
    """A new empty schema in the PostgreSQL database at url (entering gives the URL that uses it), dropped with
    everything in it on exit."""

    def __init__(self, url: str, prefix: str = "otp") -> None:
        self.name = f"{prefix}_{uuid.uuid4().hex[:10]}"
        self.url = with_search_path(url, self.name)
        self._admin = create_engine(url)

    def __enter__(self) -> str:
        return self.create()

    def __exit__(self, *_exc: object) -> None:
        self.drop()

    def create(self) -> str:
        with self._admin.begin() as conn:
            conn.execute(text(f"CREATE SCHEMA {self.name}"))
        return self.url

    def drop(self) -> None:
        try:
            with self._admin.begin() as conn:
                conn.execute(text(f"DROP SCHEMA IF EXISTS {self.name} CASCADE"))
        finally:
            self._admin.dispose()
