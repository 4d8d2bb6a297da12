"""organisations (issue 14)

An organisation table, and org_id on every per-organisation table, backfilled with 1: migration day puts
everything that exists into organisation 1, slug "default", whose brand, time zone and phone region are NULL
(the service settings), so an installation with one organisation behaves exactly as before. The backfill's
server default is dropped once the column is filled, so a write that forgets the organisation fails instead of
landing in organisation 1.

- action_config's primary key becomes (org_id, action); template_version's unique key (org_id, action,
  channel, version); gateway_config's name is unique per organisation; the live-code index (org_id, user_key,
  action). The dashboards' indexes lead with org_id.
- audit_log.org_id is NULL for platform actions (creating an organisation, assigning staff).
- staff.platform_admin (true for existing admins) and staff_membership (staff_id, org_id, role): every existing
  staff member is a member of organisation 1 with their current role.
- The rollup tables are derived data: they are re-created with org_id first in their keys and rebuilt from the
  raw rows by the next refresh (the first dashboard, or `python -m core.reporting.rollups`).

SQLite cannot add a foreign key or drop a default in place, so its tables are rebuilt (alembic's batch mode)
with foreign keys off for the migration (migrations/env.py), as SQLite's documented ALTER procedure does.

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-01
"""
from alembic import op
import sqlalchemy as sa
import sqlmodel


revision = '0014'
down_revision = '0013'
branch_labels = None
depends_on = None

BINS = 202  # the rollups' histogram bins (as in 0005)
ACTIVE = sa.text("state = 'active'")
DUE = sa.text("receipt_deadline IS NOT NULL")
HAS_ID = sa.text("provider_message_id IS NOT NULL")

# Per-organisation tables that only gain org_id (and lose nothing), biggest first.
SIMPLE = ['otp_validation', 'limit_event', 'security_event', 'delivery_receipt', 'outbox_message', 'api_client']
# (name, table, old columns, new columns, where) of the indexes 0014 re-creates: the dashboards' lead with
# org_id; the partial ones are dropped and made again around SQLite's table rebuild.
INDEXES = [
    ('uq_otp_code_active', 'otp_code', ['user_key', 'action'], ['org_id', 'user_key', 'action'], ACTIVE),
    ('ix_otp_code_dash', 'otp_code', ['created_at', 'action', 'state', 'used_at'],
     ['org_id', 'created_at', 'action', 'state', 'used_at'], None),
    ('ix_otp_request_dash', 'otp_request', ['created_at', 'action', 'kind'], ['org_id', 'created_at', 'action', 'kind'],
     None),
    ('ix_delivery_dash', 'delivery', ['created_at', 'channel', 'gateway', 'status'],
     ['org_id', 'created_at', 'channel', 'gateway', 'status'], None),
    ('ix_delivery_due', 'delivery', ['receipt_deadline'], ['receipt_deadline'], DUE),
    ('ix_delivery_receipt', 'delivery', ['gateway', 'provider_message_id'], ['gateway', 'provider_message_id'],
     HAS_ID),
    ('ix_otp_validation_dash', 'otp_validation', ['created_at', 'action', 'outcome'],
     ['org_id', 'created_at', 'action', 'outcome'], None),
    ('ix_limit_event_dash', 'limit_event', ['created_at', 'limit_type', 'action'],
     ['org_id', 'created_at', 'limit_type', 'action'], None),
]


def _string(length: int | None = None) -> sqlmodel.sql.sqltypes.AutoString:
    return sqlmodel.sql.sqltypes.AutoString(length=length)


def _sqlite() -> bool:
    return op.get_bind().dialect.name == 'sqlite'


def _create_index(name: str, table: str, columns: list[str], where) -> None:  # type: ignore[no-untyped-def]
    unique = name.startswith('uq_')
    if where is None:
        op.create_index(name, table, columns, unique=unique)
    else:
        op.create_index(name, table, columns, unique=unique, sqlite_where=where, postgresql_where=where)


def _add_org_id(table: str, *, unique_before: list[str] | None = None, unique_after: list[str] | None = None,
                primary_key: list[str] | None = None) -> None:
    """org_id NOT NULL REFERENCES organisation, backfilled with 1, then without a default.

    On SQLite a table whose keys change is re-made whole afterwards (_rebuild_sqlite_*), which drops the default.
    """
    op.add_column(table, sa.Column('org_id', sa.Integer(), nullable=False, server_default='1'))
    sqlite = _sqlite()
    if sqlite and (unique_after or primary_key):
        return
    with op.batch_alter_table(table, recreate='always' if sqlite else 'never') as batch:
        batch.alter_column('org_id', existing_type=sa.Integer(), existing_nullable=False, server_default=None)
        batch.create_foreign_key(f'fk_{table}_org_id', 'organisation', ['org_id'], ['id'])
        if unique_after is not None:
            batch.drop_constraint(f"{table}_{'_'.join(unique_before or [])}_key", type_='unique')
            batch.create_unique_constraint(f"uq_{table}_{'_'.join(unique_after)}", unique_after)
        if primary_key is not None:
            batch.drop_constraint(f'{table}_pkey', type_='primary')
            batch.create_primary_key(f'{table}_pkey', primary_key)


def _rebuild_sqlite_keys(table: str, columns: list[sa.Column], constraints: list) -> None:  # type: ignore[type-arg]
    """SQLite: a small table re-made with new keys (its unnamed UNIQUE or PRIMARY KEY cannot be altered)."""
    tmp = f'_new_{table}'
    op.create_table(tmp, *columns, *constraints)
    names = ', '.join(c.name for c in columns)
    op.execute(f'INSERT INTO {tmp} ({names}) SELECT {names} FROM {table}')
    op.drop_table(table)
    op.rename_table(tmp, table)


def upgrade() -> None:
    op.create_table('organisation',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('slug', _string(40), nullable=False),
    sa.Column('name', _string(120), nullable=False),
    sa.Column('brand', _string(100), nullable=True),
    sa.Column('timezone', _string(64), nullable=True),
    sa.Column('phone_region', _string(2), nullable=True),
    sa.Column('created_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('slug')
    )
    op.execute("INSERT INTO organisation (id, slug, name, created_at) VALUES (1, 'default', 'Default', "
               "CURRENT_TIMESTAMP)")
    if not _sqlite():  # the next organisation gets 2
        op.execute("SELECT setval(pg_get_serial_sequence('organisation', 'id'), 1)")

    for name, table, _old, _new, _where in INDEXES:
        op.drop_index(name, table_name=table)

    _add_org_id('otp_code')
    _add_org_id('otp_request')
    _add_org_id('delivery')
    for table in SIMPLE:
        _add_org_id(table)
    _add_org_id('template_version', unique_before=['action', 'channel', 'version'],
                unique_after=['org_id', 'action', 'channel', 'version'])
    _add_org_id('gateway_config', unique_before=['name'], unique_after=['org_id', 'name'])
    _add_org_id('action_config', primary_key=['org_id', 'action'])
    if _sqlite():
        _rebuild_sqlite_template_version()
        _rebuild_sqlite_gateway_config()
        _rebuild_sqlite_action_config()

    for name, table, _old, new, where in INDEXES:
        _create_index(name, table, new, where)

    op.add_column('audit_log', sa.Column('org_id', sa.Integer(), nullable=True))
    with op.batch_alter_table('audit_log', recreate='auto') as batch:
        batch.create_foreign_key('fk_audit_log_org_id', 'organisation', ['org_id'], ['id'])
    op.execute("UPDATE audit_log SET org_id = 1 WHERE action NOT LIKE 'session.%' AND action NOT LIKE 'staff.%'")

    op.add_column('staff', sa.Column('platform_admin', sa.Boolean(), nullable=False, server_default=sa.false()))
    op.execute("UPDATE staff SET platform_admin = (role = 'admin')")
    op.create_table('staff_membership',
    sa.Column('staff_id', sa.Integer(), nullable=False),
    sa.Column('org_id', sa.Integer(), nullable=False),
    sa.Column('role', _string(10), nullable=False),
    sa.ForeignKeyConstraint(['org_id'], ['organisation.id'], ),
    sa.ForeignKeyConstraint(['staff_id'], ['staff.id'], ),
    sa.PrimaryKeyConstraint('staff_id', 'org_id')
    )
    op.execute("INSERT INTO staff_membership (staff_id, org_id, role) SELECT id, 1, role FROM staff")

    _recreate_rollups()


def _rebuild_sqlite_template_version() -> None:
    _rebuild_sqlite_keys('template_version', [
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('org_id', sa.Integer(), nullable=False),
        sa.Column('action', _string(40), nullable=False),
        sa.Column('channel', _string(10), nullable=False),
        sa.Column('text', _string(), nullable=True),
        sa.Column('subject', _string(500), nullable=True),
        sa.Column('body', _string(), nullable=True),
        sa.Column('is_html', sa.Boolean(), nullable=False),
        sa.Column('whatsapp_name', _string(200), nullable=True),
        sa.Column('whatsapp_language', _string(20), nullable=True),
        sa.Column('zalo_template_id', _string(100), nullable=True),
        sa.Column('version', sa.Integer(), nullable=False),
        sa.Column('status', _string(10), nullable=False),
        sa.Column('is_active', sa.Boolean(), nullable=False),
        sa.Column('author', _string(120), nullable=False),
        sa.Column('reviewer', _string(120), nullable=True),
        sa.Column('reason', _string(1000), nullable=True),
        sa.Column('created_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.Column('reviewed_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True),
    ], [sa.ForeignKeyConstraint(['org_id'], ['organisation.id'], name='fk_template_version_org_id'),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('org_id', 'action', 'channel', 'version',
                            name='uq_template_version_org_id_action_channel_version')])


def _rebuild_sqlite_gateway_config() -> None:
    _rebuild_sqlite_keys('gateway_config', [
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('org_id', sa.Integer(), nullable=False),
        sa.Column('name', _string(60), nullable=False),
        sa.Column('channel', _string(10), nullable=False),
        sa.Column('provider', _string(20), nullable=False),
        sa.Column('endpoint', _string(500), nullable=False),
        sa.Column('sender', _string(200), nullable=False),
        sa.Column('options', _string(), nullable=False),
        sa.Column('is_default', sa.Boolean(), nullable=False),
        sa.Column('enabled', sa.Boolean(), nullable=False),
        sa.Column('credentials_enc', sa.LargeBinary(), nullable=True),
        sa.Column('created_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.Column('updated_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
    ], [sa.ForeignKeyConstraint(['org_id'], ['organisation.id'], name='fk_gateway_config_org_id'),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('org_id', 'name', name='uq_gateway_config_org_id_name')])


def _rebuild_sqlite_action_config() -> None:
    optional_ints = ('daily_cap', 'destination_limit', 'destination_window_minutes', 'prefix_limit',
                     'prefix_window_minutes', 'ip_limit', 'ip_window_minutes', 'client_limit')
    _rebuild_sqlite_keys('action_config', [
        sa.Column('org_id', sa.Integer(), nullable=False),
        sa.Column('action', _string(40), nullable=False),
        sa.Column('code_length', sa.Integer(), nullable=False),
        sa.Column('alphanumeric', sa.Boolean(), nullable=False),
        sa.Column('validity_minutes', sa.Integer(), nullable=False),
        sa.Column('channels', _string(), nullable=False),
        sa.Column('channel_policy', _string(), nullable=False),
        *[sa.Column(name, sa.Integer(), nullable=False) for name in (
            'validate_limit', 'validate_window_minutes', 'attempts_per_code', 'max_consecutive_failures',
            'lock_minutes', 'max_sends_per_code', 'failover_seconds')],
        sa.Column('gateways', _string(), nullable=False),
        sa.Column('failover', _string(), nullable=False),
        *[sa.Column(name, sa.Integer(), nullable=True) for name in optional_ints],
        sa.Column('channel_budgets', _string(), nullable=False),
        sa.Column('safe_mode', _string(10), nullable=True),
        sa.Column('updated_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.Column('updated_by', _string(120), nullable=True),
    ], [sa.ForeignKeyConstraint(['org_id'], ['organisation.id'], name='fk_action_config_org_id'),
        sa.PrimaryKeyConstraint('org_id', 'action')])


def _bins() -> list[sa.Column]:
    return [sa.Column(f'h{i}', sa.Integer(), nullable=True) for i in range(BINS)]


def _recreate_rollups() -> None:
    for index, table in (('ix_failure_rollup_bucket', 'failure_rollup'),
                         ('ix_failure_rollup_action_bucket', 'failure_rollup'),
                         ('ix_delivery_rollup_queued', 'delivery_rollup'),
                         ('ix_delivery_rollup_bucket', 'delivery_rollup'),
                         ('ix_usage_rollup_bucket', 'usage_rollup')):
        op.drop_index(index, table_name=table)
    for table in ('failure_rollup', 'delivery_rollup', 'usage_rollup'):
        op.drop_table(table)
    op.execute('DELETE FROM rollup_state')  # the next refresh rebuilds every bucket
    org = sa.ForeignKeyConstraint(['org_id'], ['organisation.id'])
    op.create_table('usage_rollup',
    sa.Column('org_id', sa.Integer(), nullable=False),
    sa.Column('channel', _string(10), nullable=False),
    sa.Column('bucket', sa.Integer(), nullable=False),
    sa.Column('action', _string(40), nullable=False),
    *[sa.Column(name, sa.Integer(), nullable=False) for name in
      ('requests', 'issued', 'resent', 'validations', 'validated', 'codes', 'codes_used')],
    sa.Column('ttv_max_us', sa.BigInteger(), nullable=True),
    *_bins(),
    org,
    sa.PrimaryKeyConstraint('org_id', 'channel', 'bucket', 'action'),
    sqlite_with_rowid=False,
    )
    op.create_index('ix_usage_rollup_bucket', 'usage_rollup', ['bucket'], unique=False)
    op.create_table('delivery_rollup',
    sa.Column('org_id', sa.Integer(), nullable=False),
    sa.Column('action', _string(40), nullable=False),
    sa.Column('bucket', sa.Integer(), nullable=False),
    sa.Column('channel', _string(10), nullable=False),
    sa.Column('gateway', _string(40), nullable=False),
    *[sa.Column(name, sa.Integer(), nullable=False) for name in ('messages', 'queued', 'sent', 'delivered', 'failed')],
    sa.Column('latency_max_ms', sa.Float(), nullable=True),
    *_bins(),
    sa.ForeignKeyConstraint(['org_id'], ['organisation.id']),
    sa.PrimaryKeyConstraint('org_id', 'action', 'bucket', 'channel', 'gateway'),
    sqlite_with_rowid=False,
    )
    op.create_index('ix_delivery_rollup_bucket', 'delivery_rollup', ['bucket'], unique=False)
    op.create_index('ix_delivery_rollup_queued', 'delivery_rollup', ['bucket'], unique=False,
                    sqlite_where=sa.text('queued > 0'), postgresql_where=sa.text('queued > 0'))
    op.create_table('failure_rollup',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('org_id', sa.Integer(), nullable=False),
    sa.Column('action', _string(40), nullable=False),
    sa.Column('bucket', sa.Integer(), nullable=False),
    sa.Column('channel', _string(10), nullable=False),
    sa.Column('gateway', _string(40), nullable=False),
    sa.Column('error', _string(1000), nullable=False),
    sa.Column('failures', sa.Integer(), nullable=False),
    sa.ForeignKeyConstraint(['org_id'], ['organisation.id']),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index('ix_failure_rollup_action_bucket', 'failure_rollup', ['org_id', 'action', 'bucket'], unique=False)
    op.create_index('ix_failure_rollup_bucket', 'failure_rollup', ['bucket'], unique=False)


def downgrade() -> None:
    raise NotImplementedError("organisations cannot be folded back into one: restore the backup taken before 0014")
