"""dashboard indexes

Covering indexes for the dashboards' aggregations over the raw tables (core/dashboards.py): each range
query reads an index alone, in created_at order, instead of the table.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-27
"""
from alembic import op


revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None

# (name, table, columns)
INDEXES = [
    ('ix_otp_request_dash', 'otp_request', ['created_at', 'action', 'kind']),
    ('ix_otp_code_dash', 'otp_code', ['created_at', 'action', 'state', 'used_at']),
    ('ix_otp_validation_dash', 'otp_validation', ['created_at', 'action', 'outcome']),
    ('ix_otp_validation_code_id', 'otp_validation', ['code_id']),
    ('ix_delivery_dash', 'delivery', ['created_at', 'channel', 'gateway', 'status']),
    ('ix_delivery_latency', 'delivery', ['channel', 'gateway', 'latency_ms', 'created_at']),
    ('ix_delivery_destination', 'delivery', ['destination']),
    ('ix_limit_event_dash', 'limit_event', ['created_at', 'limit_type', 'action']),
    ('ix_limit_event_user', 'limit_event', ['user_key', 'created_at']),
    ('ix_usage_counter_period', 'usage_counter', ['scope', 'period', 'count']),
]


def upgrade() -> None:
    for name, table, columns in INDEXES:
        op.create_index(name, table, columns, unique=False)


def downgrade() -> None:
    for name, table, _ in reversed(INDEXES):
        op.drop_index(name, table_name=table)
