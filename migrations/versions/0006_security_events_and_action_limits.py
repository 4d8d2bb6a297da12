"""security events, per-action abuse limits, longer validation outcomes

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-27
"""
from alembic import op
import sqlalchemy as sa
import sqlmodel


revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None

LIMIT_COLUMNS = ('destination_limit', 'destination_window_minutes', 'prefix_limit', 'prefix_window_minutes',
                 'ip_limit', 'ip_window_minutes', 'client_limit')


def upgrade() -> None:
    op.create_table('security_event',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('created_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
    sa.Column('kind', sqlmodel.sql.sqltypes.AutoString(length=20), nullable=False),
    sa.Column('user_key', sqlmodel.sql.sqltypes.AutoString(length=340), nullable=False),
    sa.Column('action', sqlmodel.sql.sqltypes.AutoString(length=40), nullable=False),
    sa.Column('detail', sqlmodel.sql.sqltypes.AutoString(length=500), nullable=True),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('security_event', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_security_event_created_at'), ['created_at'], unique=False)
    with op.batch_alter_table('action_config', schema=None) as batch_op:
        for name in LIMIT_COLUMNS:
            batch_op.add_column(sa.Column(name, sa.Integer(), nullable=True))
    # The last used code of a user and action (replay detection) without scanning otp_code.
    op.create_index('ix_otp_code_user_action_state', 'otp_code', ['user_key', 'action', 'state', 'id'], unique=False)
    # 'used_elsewhere' (14 characters) did not fit the first schema's 10; PostgreSQL refused it.
    with op.batch_alter_table('otp_validation', schema=None) as batch_op:
        batch_op.alter_column('outcome', existing_type=sqlmodel.sql.sqltypes.AutoString(length=10),
                              type_=sqlmodel.sql.sqltypes.AutoString(length=14), existing_nullable=False)


def downgrade() -> None:
    op.drop_index('ix_otp_code_user_action_state', table_name='otp_code')
    with op.batch_alter_table('otp_validation', schema=None) as batch_op:
        batch_op.alter_column('outcome', existing_type=sqlmodel.sql.sqltypes.AutoString(length=14),
                              type_=sqlmodel.sql.sqltypes.AutoString(length=10), existing_nullable=False)
    with op.batch_alter_table('action_config', schema=None) as batch_op:
        for name in reversed(LIMIT_COLUMNS):
            batch_op.drop_column(name)
    with op.batch_alter_table('security_event', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_security_event_created_at'))
    op.drop_table('security_event')
