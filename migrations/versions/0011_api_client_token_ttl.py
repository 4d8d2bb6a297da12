"""API clients' OAuth access-token lifetime

Capillary's OAuth (POST /v3/oauth/token/generate) issues a token whose life is set per API client ("token
expiry duration"); existing clients get Capillary's default of 300 seconds.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-01
"""
from alembic import op
import sqlalchemy as sa


revision = '0011'
down_revision = '0010'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('api_client', schema=None) as batch_op:
        batch_op.add_column(sa.Column('token_ttl_seconds', sa.Integer(), nullable=False, server_default='300'))


def downgrade() -> None:
    with op.batch_alter_table('api_client', schema=None) as batch_op:
        batch_op.drop_column('token_ttl_seconds')
