"""leaner write indexes

A generate writes one page per B-tree it touches, and on SQLite the WAL append of those pages is most of a
generate's cost. Three indexes bought nothing since the dashboards read rollups (0005):
ix_delivery_created_at and ix_otp_request_created_at are prefixes of the dashboards' created_at-led indexes,
and ix_delivery_latency served percentiles that the rollups' histograms now give. The failover poller's
query (receipt_deadline <= now) had no index and read the whole delivery table each round; its new index
is partial, so deliveries that await no receipt (the outbox's, most) cost nothing to keep in it.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-27
"""
from alembic import op
import sqlalchemy as sa


revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None

DUE = sa.text("receipt_deadline IS NOT NULL")


def upgrade() -> None:
    op.drop_index('ix_delivery_created_at', table_name='delivery')
    op.drop_index('ix_otp_request_created_at', table_name='otp_request')
    op.drop_index('ix_delivery_latency', table_name='delivery')
    op.create_index('ix_delivery_due', 'delivery', ['receipt_deadline'], unique=False,
                    sqlite_where=DUE, postgresql_where=DUE)


def downgrade() -> None:
    op.drop_index('ix_delivery_due', table_name='delivery')
    op.create_index('ix_delivery_latency', 'delivery', ['channel', 'gateway', 'latency_ms', 'created_at'],
                    unique=False)
    op.create_index('ix_otp_request_created_at', 'otp_request', ['created_at'], unique=False)
    op.create_index('ix_delivery_created_at', 'delivery', ['created_at'], unique=False)
