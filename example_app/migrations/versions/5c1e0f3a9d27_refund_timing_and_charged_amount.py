"""refund timing and charged amount: partnerstack_transaction.charge_refunded_at,
charged_amount; partnerstack_refund.undone_at

Revision ID: 5c1e0f3a9d27
Revises: 1b9a1225b98a
Create Date: 2026-11-28 18:40:00.000000

"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = '5c1e0f3a9d27'
down_revision = '1b9a1225b98a'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('partnerstack_refund', schema=None) as batch_op:
        batch_op.add_column(sa.Column('undone_at', sa.BigInteger(), nullable=True))

    with op.batch_alter_table('partnerstack_transaction', schema=None) as batch_op:
        batch_op.add_column(sa.Column('charge_refunded_at', sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column('charged_amount', sa.BigInteger(), nullable=True))


def downgrade():
    with op.batch_alter_table('partnerstack_transaction', schema=None) as batch_op:
        batch_op.drop_column('charged_amount')
        batch_op.drop_column('charge_refunded_at')

    with op.batch_alter_table('partnerstack_refund', schema=None) as batch_op:
        batch_op.drop_column('undone_at')
