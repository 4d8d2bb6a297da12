"""rollup spans: hour and day rows beside the 15-minute ones (issue 14, dashboards at 10 organisations)

The dashboards read their figures from the rollup tables. A 30-day figure summed 2,880 quarter-hour rows per
organisation, channel and gateway (202 histogram columns each): 5.5 s on SQLite for ten organisations. Each
rollup table gains a span column, the length of a row's bucket run in quarter hours: 1 (15 minutes, as
before), 4 (a UTC hour) or 96 (a UTC day); bucket stays the first quarter hour's number. A range of local days
is read as whole days, then whole hours, then quarter hours at its edges (core.reporting.rollups.cover), so a
30-day figure reads about 80 rows per group instead of 2,880 and the figures stay exact in every time zone.

The security events of one organisation are read by range on its limits page: an index (org_id, created_at).

The rollup tables are derived data: they are re-created with span in their keys and rebuilt from the raw rows
by the next refresh (the first dashboard, or `python -m core.reporting.rollups`), as 0014 did.

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-01
"""
from alembic import op
import sqlalchemy as sa
import sqlmodel


revision = '0015'
down_revision = '0014'
branch_labels = None
depends_on = None

BINS = 202  # the rollups' histogram bins (as in 0005)
INDEXES = (('ix_failure_rollup_bucket', 'failure_rollup'), ('ix_failure_rollup_action_bucket', 'failure_rollup'),
           ('ix_delivery_rollup_queued', 'delivery_rollup'), ('ix_delivery_rollup_bucket', 'delivery_rollup'),
           ('ix_usage_rollup_bucket', 'usage_rollup'))


def _string(length: int | None = None) -> sqlmodel.sql.sqltypes.AutoString:
    return sqlmodel.sql.sqltypes.AutoString(length=length)


def _bins() -> list[sa.Column]:
    return [sa.Column(f'h{i}', sa.Integer(), nullable=True) for i in range(BINS)]


def _span() -> sa.Column:
    return sa.Column('span', sa.Integer(), server_default='1', nullable=False)


def _drop_rollups() -> None:
    for index, table in INDEXES:
        op.drop_index(index, table_name=table)
    for table in ('failure_rollup', 'delivery_rollup', 'usage_rollup'):
        op.drop_table(table)
    op.execute('DELETE FROM rollup_state')  # the next refresh rebuilds every bucket


def _create_rollups(span: bool) -> None:
    def spans() -> list[sa.Column]:  # a new Column for each table: a Column belongs to one table
        return [_span()] if span else []
    op.create_table('usage_rollup',
    sa.Column('org_id', sa.Integer(), nullable=False),
    sa.Column('channel', _string(10), nullable=False),
    *spans(),
    sa.Column('bucket', sa.Integer(), nullable=False),
    sa.Column('action', _string(40), nullable=False),
    *[sa.Column(name, sa.Integer(), nullable=False) for name in
      ('requests', 'issued', 'resent', 'validations', 'validated', 'codes', 'codes_used')],
    sa.Column('ttv_max_us', sa.BigInteger(), nullable=True),
    *_bins(),
    sa.ForeignKeyConstraint(['org_id'], ['organisation.id']),
    sa.PrimaryKeyConstraint('org_id', 'channel', *(['span'] if span else []), 'bucket', 'action'),
    sqlite_with_rowid=False,
    )
    op.create_index('ix_usage_rollup_bucket', 'usage_rollup', ['bucket'], unique=False)
    op.create_table('delivery_rollup',
    sa.Column('org_id', sa.Integer(), nullable=False),
    sa.Column('action', _string(40), nullable=False),
    *spans(),
    sa.Column('bucket', sa.Integer(), nullable=False),
    sa.Column('channel', _string(10), nullable=False),
    sa.Column('gateway', _string(40), nullable=False),
    *[sa.Column(name, sa.Integer(), nullable=False) for name in ('messages', 'queued', 'sent', 'delivered', 'failed')],
    sa.Column('latency_max_ms', sa.Float(), nullable=True),
    *_bins(),
    sa.ForeignKeyConstraint(['org_id'], ['organisation.id']),
    sa.PrimaryKeyConstraint('org_id', 'action', *(['span'] if span else []), 'bucket', 'channel', 'gateway'),
    sqlite_with_rowid=False,
    )
    op.create_index('ix_delivery_rollup_bucket', 'delivery_rollup', ['bucket'], unique=False)
    op.create_index('ix_delivery_rollup_queued', 'delivery_rollup', ['bucket'], unique=False,
                    sqlite_where=sa.text('queued > 0'), postgresql_where=sa.text('queued > 0'))
    op.create_table('failure_rollup',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('org_id', sa.Integer(), nullable=False),
    sa.Column('action', _string(40), nullable=False),
    *spans(),
    sa.Column('bucket', sa.Integer(), nullable=False),
    sa.Column('channel', _string(10), nullable=False),
    sa.Column('gateway', _string(40), nullable=False),
    sa.Column('error', _string(1000), nullable=False),
    sa.Column('failures', sa.Integer(), nullable=False),
    sa.ForeignKeyConstraint(['org_id'], ['organisation.id']),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index('ix_failure_rollup_action_bucket', 'failure_rollup',
                    ['org_id', 'action', *(['span'] if span else []), 'bucket'], unique=False)
    op.create_index('ix_failure_rollup_bucket', 'failure_rollup', ['bucket'], unique=False)


def upgrade() -> None:
    _drop_rollups()
    _create_rollups(span=True)
    op.create_index('ix_security_event_org', 'security_event', ['org_id', 'created_at'], unique=False)


def downgrade() -> None:
    op.drop_index('ix_security_event_org', table_name='security_event')
    _drop_rollups()
    _create_rollups(span=False)
