"""initial schema

Revision ID: 0001
Revises: 
Create Date: 2026-11-27
"""
from alembic import op
import sqlalchemy as sa
import sqlmodel


revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('action_config',
    sa.Column('code_length', sa.Integer(), nullable=False),
    sa.Column('alphanumeric', sa.Boolean(), nullable=False),
    sa.Column('validity_minutes', sa.Integer(), nullable=False),
    sa.Column('channels', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('channel_policy', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('daily_cap', sa.Integer(), nullable=True),
    sa.Column('validate_limit', sa.Integer(), nullable=False),
    sa.Column('validate_window_minutes', sa.Integer(), nullable=False),
    sa.Column('attempts_per_code', sa.Integer(), nullable=False),
    sa.Column('max_consecutive_failures', sa.Integer(), nullable=False),
    sa.Column('lock_minutes', sa.Integer(), nullable=False),
    sa.Column('max_sends_per_code', sa.Integer(), nullable=False),
    sa.Column('action', sqlmodel.sql.sqltypes.AutoString(length=40), nullable=False),
    sa.Column('updated_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
    sa.Column('updated_by', sqlmodel.sql.sqltypes.AutoString(length=120), nullable=True),
    sa.PrimaryKeyConstraint('action')
    )
    op.create_table('api_client',
    sa.Column('name', sqlmodel.sql.sqltypes.AutoString(length=120), nullable=False),
    sa.Column('permissions', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('key', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('secret_hash', sqlmodel.sql.sqltypes.AutoString(length=255), nullable=False),
    sa.Column('created_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
    sa.Column('revoked_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('key')
    )
    op.create_table('failure_counter',
    sa.Column('user_key', sqlmodel.sql.sqltypes.AutoString(length=340), nullable=False),
    sa.Column('action', sqlmodel.sql.sqltypes.AutoString(length=40), nullable=False),
    sa.Column('consecutive', sa.Integer(), nullable=False),
    sa.Column('locked_until', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True),
    sa.PrimaryKeyConstraint('user_key', 'action')
    )
    op.create_table('limit_event',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('created_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
    sa.Column('user_key', sqlmodel.sql.sqltypes.AutoString(length=340), nullable=False),
    sa.Column('action', sqlmodel.sql.sqltypes.AutoString(length=40), nullable=False),
    sa.Column('limit_type', sqlmodel.sql.sqltypes.AutoString(length=20), nullable=False),
    sa.Column('client_id', sa.Integer(), nullable=True),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('limit_event', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_limit_event_created_at'), ['created_at'], unique=False)

    op.create_table('otp_code',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('user_key', sqlmodel.sql.sqltypes.AutoString(length=340), nullable=False),
    sa.Column('entity_type', sqlmodel.sql.sqltypes.AutoString(length=10), nullable=False),
    sa.Column('action', sqlmodel.sql.sqltypes.AutoString(length=40), nullable=False),
    sa.Column('code_hmac', sa.LargeBinary(), nullable=False),
    sa.Column('code_enc', sa.LargeBinary(), nullable=True),
    sa.Column('created_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
    sa.Column('expires_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
    sa.Column('state', sqlmodel.sql.sqltypes.AutoString(length=10), nullable=False),
    sa.Column('failed_attempts', sa.Integer(), nullable=False),
    sa.Column('send_count', sa.Integer(), nullable=False),
    sa.Column('used_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('otp_code', schema=None) as batch_op:
        batch_op.create_index('uq_otp_code_active', ['user_key', 'action'], unique=True, sqlite_where=sa.text("state = 'active'"), postgresql_where=sa.text("state = 'active'"))

    op.create_table('otp_validation',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('created_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
    sa.Column('user_key', sqlmodel.sql.sqltypes.AutoString(length=340), nullable=False),
    sa.Column('action', sqlmodel.sql.sqltypes.AutoString(length=40), nullable=False),
    sa.Column('code_id', sa.Integer(), nullable=True),
    sa.Column('outcome', sqlmodel.sql.sqltypes.AutoString(length=10), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('otp_validation', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_otp_validation_created_at'), ['created_at'], unique=False)

    op.create_table('outbox_message',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('created_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
    sa.Column('delivery_id', sa.Integer(), nullable=True),
    sa.Column('channel', sqlmodel.sql.sqltypes.AutoString(length=10), nullable=False),
    sa.Column('recipient', sqlmodel.sql.sqltypes.AutoString(length=320), nullable=False),
    sa.Column('subject', sqlmodel.sql.sqltypes.AutoString(length=1000), nullable=True),
    sa.Column('body', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('is_html', sa.Boolean(), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('outbox_message', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_outbox_message_created_at'), ['created_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_outbox_message_recipient'), ['recipient'], unique=False)

    op.create_table('template_version',
    sa.Column('action', sqlmodel.sql.sqltypes.AutoString(length=40), nullable=False),
    sa.Column('channel', sqlmodel.sql.sqltypes.AutoString(length=10), nullable=False),
    sa.Column('text', sqlmodel.sql.sqltypes.AutoString(), nullable=True),
    sa.Column('subject', sqlmodel.sql.sqltypes.AutoString(length=500), nullable=True),
    sa.Column('body', sqlmodel.sql.sqltypes.AutoString(), nullable=True),
    sa.Column('is_html', sa.Boolean(), nullable=False),
    sa.Column('whatsapp_name', sqlmodel.sql.sqltypes.AutoString(length=200), nullable=True),
    sa.Column('whatsapp_language', sqlmodel.sql.sqltypes.AutoString(length=20), nullable=True),
    sa.Column('zalo_template_id', sqlmodel.sql.sqltypes.AutoString(length=100), nullable=True),
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.Column('status', sqlmodel.sql.sqltypes.AutoString(length=10), nullable=False),
    sa.Column('is_active', sa.Boolean(), nullable=False),
    sa.Column('author', sqlmodel.sql.sqltypes.AutoString(length=120), nullable=False),
    sa.Column('reviewer', sqlmodel.sql.sqltypes.AutoString(length=120), nullable=True),
    sa.Column('reason', sqlmodel.sql.sqltypes.AutoString(length=1000), nullable=True),
    sa.Column('created_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
    sa.Column('reviewed_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('action', 'channel', 'version')
    )
    op.create_table('usage_counter',
    sa.Column('scope', sqlmodel.sql.sqltypes.AutoString(length=60), nullable=False),
    sa.Column('user_key', sqlmodel.sql.sqltypes.AutoString(length=340), nullable=False),
    sa.Column('period', sqlmodel.sql.sqltypes.AutoString(length=20), nullable=False),
    sa.Column('count', sa.Integer(), nullable=False),
    sa.PrimaryKeyConstraint('scope', 'user_key', 'period')
    )
    op.create_table('otp_request',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('created_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
    sa.Column('code_id', sa.Integer(), nullable=False),
    sa.Column('user_key', sqlmodel.sql.sqltypes.AutoString(length=340), nullable=False),
    sa.Column('action', sqlmodel.sql.sqltypes.AutoString(length=40), nullable=False),
    sa.Column('kind', sqlmodel.sql.sqltypes.AutoString(length=10), nullable=False),
    sa.Column('client_id', sa.Integer(), nullable=True),
    sa.ForeignKeyConstraint(['code_id'], ['otp_code.id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('otp_request', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_otp_request_code_id'), ['code_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_otp_request_created_at'), ['created_at'], unique=False)

    op.create_table('delivery',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('request_id', sa.Integer(), nullable=False),
    sa.Column('code_id', sa.Integer(), nullable=False),
    sa.Column('channel', sqlmodel.sql.sqltypes.AutoString(length=10), nullable=False),
    sa.Column('destination', sqlmodel.sql.sqltypes.AutoString(length=320), nullable=False),
    sa.Column('gateway', sqlmodel.sql.sqltypes.AutoString(length=40), nullable=False),
    sa.Column('status', sqlmodel.sql.sqltypes.AutoString(length=10), nullable=False),
    sa.Column('provider_message_id', sqlmodel.sql.sqltypes.AutoString(length=200), nullable=True),
    sa.Column('http_status', sa.Integer(), nullable=True),
    sa.Column('error', sqlmodel.sql.sqltypes.AutoString(length=1000), nullable=True),
    sa.Column('latency_ms', sa.Float(), nullable=True),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('created_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
    sa.Column('updated_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
    sa.ForeignKeyConstraint(['request_id'], ['otp_request.id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('delivery', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_delivery_code_id'), ['code_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_delivery_created_at'), ['created_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_delivery_request_id'), ['request_id'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('delivery', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_delivery_request_id'))
        batch_op.drop_index(batch_op.f('ix_delivery_created_at'))
        batch_op.drop_index(batch_op.f('ix_delivery_code_id'))

    op.drop_table('delivery')
    with op.batch_alter_table('otp_request', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_otp_request_created_at'))
        batch_op.drop_index(batch_op.f('ix_otp_request_code_id'))

    op.drop_table('otp_request')
    op.drop_table('usage_counter')
    op.drop_table('template_version')
    with op.batch_alter_table('outbox_message', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_outbox_message_recipient'))
        batch_op.drop_index(batch_op.f('ix_outbox_message_created_at'))

    op.drop_table('outbox_message')
    with op.batch_alter_table('otp_validation', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_otp_validation_created_at'))

    op.drop_table('otp_validation')
    with op.batch_alter_table('otp_code', schema=None) as batch_op:
        batch_op.drop_index('uq_otp_code_active', sqlite_where=sa.text("state = 'active'"), postgresql_where=sa.text("state = 'active'"))

    op.drop_table('otp_code')
    with op.batch_alter_table('limit_event', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_limit_event_created_at'))

    op.drop_table('limit_event')
    op.drop_table('failure_counter')
    op.drop_table('api_client')
    op.drop_table('action_config')
