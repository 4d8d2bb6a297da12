"""dashboard rollups

Rollup tables for the dashboards (core/rollups.py): counts per 15-minute UTC bucket with fixed histogram bins
for latency and time to validate, and the high-water marks of the source tables they were read from. They
start empty: the first dashboard query (or `python -m core.rollups`) fills them from the raw rows.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-27
"""
from alembic import op
import sqlalchemy as sa
import sqlmodel


revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None

# The histogram bins h0..h201 of core/histogram.py at the time of this revision (40 per decade over five
# decades, plus an underflow and an overflow bin). Changing the bins needs a new revision.
BINS = 202


def _bins() -> list[sa.Column]:
    return [sa.Column(f'h{i}', sa.Integer(), nullable=True) for i in range(BINS)]


def _string(length: int) -> sqlmodel.sql.sqltypes.AutoString:
    return sqlmodel.sql.sqltypes.AutoString(length=length)


def upgrade() -> None:
    op.create_table('rollup_state',
    sa.Column('source', _string(40), nullable=False),
    sa.Column('high_water', sa.Integer(), nullable=False),
    sa.Column('window_rows', sa.Integer(), nullable=False),
    sa.Column('refreshed_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
    sa.PrimaryKeyConstraint('source')
    )
    op.create_table('usage_rollup',
    sa.Column('channel', _string(10), nullable=False),
    sa.Column('bucket', sa.Integer(), nullable=False),
    sa.Column('action', _string(40), nullable=False),
    *[sa.Column(name, sa.Integer(), nullable=False) for name in
      ('requests', 'issued', 'resent', 'validations', 'validated', 'codes', 'codes_used')],
    sa.Column('ttv_max_us', sa.BigInteger(), nullable=True),
    *_bins(),
    sa.PrimaryKeyConstraint('channel', 'bucket', 'action'),
    sqlite_with_rowid=False,
    )
    op.create_index('ix_usage_rollup_bucket', 'usage_rollup', ['bucket'], unique=False)
    op.create_table('delivery_rollup',
    sa.Column('action', _string(40), nullable=False),
    sa.Column('bucket', sa.Integer(), nullable=False),
    sa.Column('channel', _string(10), nullable=False),
    sa.Column('gateway', _string(40), nullable=False),
    *[sa.Column(name, sa.Integer(), nullable=False) for name in ('messages', 'queued', 'sent', 'delivered', 'failed')],
    sa.Column('latency_max_ms', sa.Float(), nullable=True),
    *_bins(),
    sa.PrimaryKeyConstraint('action', 'bucket', 'channel', 'gateway'),
    sqlite_with_rowid=False,
    )
    op.create_index('ix_delivery_rollup_bucket', 'delivery_rollup', ['bucket'], unique=False)
    op.create_index('ix_delivery_rollup_queued', 'delivery_rollup', ['bucket'], unique=False,
                    sqlite_where=sa.text('queued > 0'), postgresql_where=sa.text('queued > 0'))
    op.create_table('failure_rollup',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('action', _string(40), nullable=False),
    sa.Column('bucket', sa.Integer(), nullable=False),
    sa.Column('channel', _string(10), nullable=False),
    sa.Column('gateway', _string(40), nullable=False),
    sa.Column('error', _string(1000), nullable=False),
    sa.Column('failures', sa.Integer(), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index('ix_failure_rollup_action_bucket', 'failure_rollup', ['action', 'bucket'], unique=False)
    op.create_index('ix_failure_rollup_bucket', 'failure_rollup', ['bucket'], unique=False)


def downgrade() -> None:
    op.drop_index('ix_failure_rollup_bucket', table_name='failure_rollup')
    op.drop_index('ix_failure_rollup_action_bucket', table_name='failure_rollup')
    op.drop_table('failure_rollup')
    op.drop_index('ix_delivery_rollup_queued', table_name='delivery_rollup')
    op.drop_index('ix_delivery_rollup_bucket', table_name='delivery_rollup')
    op.drop_table('delivery_rollup')
    op.drop_index('ix_usage_rollup_bucket', table_name='usage_rollup')
    op.drop_table('usage_rollup')
    op.drop_table('rollup_state')
