"""an index for delivery receipts

A receipt finds its delivery by (gateway, provider message id), inside a write transaction: without an index
that read scanned the whole delivery table while holding SQLite's write lock. The index is partial: deliveries
without a provider message id (the outbox's, most in development) are not in it, so a generate that writes
one costs nothing more. Both SQLite and PostgreSQL use a partial index on "x IS NOT NULL" for "x = ?".

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-01
"""
from alembic import op
import sqlalchemy as sa


revision = '0012'
down_revision = '0011'
branch_labels = None
depends_on = None

HAS_ID = sa.text("provider_message_id IS NOT NULL")


def upgrade() -> None:
    op.create_index('ix_delivery_receipt', 'delivery', ['gateway', 'provider_message_id'], unique=False,
                    sqlite_where=HAS_ID, postgresql_where=HAS_ID)


def downgrade() -> None:
    op.drop_index('ix_delivery_receipt', table_name='delivery')
