"""request body templates kept for later failover steps

A failover step sent by the poller (no delivered receipt in time) runs after the generate request returned;
it must send with the template the request body carried, so that request's template fields are kept with it.

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-27
"""
from alembic import op
import sqlalchemy as sa


revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('otp_request', schema=None) as batch_op:
        batch_op.add_column(sa.Column('body_templates', sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('otp_request', schema=None) as batch_op:
        batch_op.drop_column('body_templates')
