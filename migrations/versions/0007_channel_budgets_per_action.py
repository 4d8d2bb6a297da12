"""per-action channel budgets and safe mode

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-28
"""
from alembic import op
import sqlalchemy as sa
import sqlmodel


revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('action_config', schema=None) as batch_op:
        # e.g. "SMS=2000,PHONE=100": the action's own daily budgets, counted besides OTP_CHANNEL_BUDGETS.
        batch_op.add_column(sa.Column('channel_budgets', sqlmodel.sql.sqltypes.AutoString(), nullable=False,
                                      server_default=''))
        # refuse, email_only, or NULL for the service-wide OTP_SAFE_MODE.
        batch_op.add_column(sa.Column('safe_mode', sqlmodel.sql.sqltypes.AutoString(length=10), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('action_config', schema=None) as batch_op:
        batch_op.drop_column('safe_mode')
        batch_op.drop_column('channel_budgets')
