"""where an API client's end users' addresses come from

A Capillary client is usually a backend acting for many customers: its own address is not a customer's, so
the per-address limit counts only an end user's address that the client itself names (a header such as
X-End-User-IP, or X-Forwarded-For resolved through OTP_TRUSTED_PROXIES). Null: a backend, no per-address count.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-01
"""
from alembic import op
import sqlalchemy as sa


revision = '0010'
down_revision = '0009'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('api_client', schema=None) as batch_op:
        batch_op.add_column(sa.Column('end_user_ip_header', sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('api_client', schema=None) as batch_op:
        batch_op.drop_column('end_user_ip_header')
