"""Job lifecycle: base model folder, pause flag, scheduler lease, integrations, result files, from_checkpoint, kept checkpoint adapters

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def job_columns() -> tuple[sa.Column, ...]:
    """The new ``fine_tuning_jobs`` columns (fresh objects: a Column belongs to one table)."""
    return (
        sa.Column("model_path", sa.Text(), nullable=True),
        sa.Column("pause_requested", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column("lease_owner", sa.String(length=128), nullable=True),
        sa.Column("lease_heartbeat_at", sa.Float(), nullable=True),
        sa.Column("worker_pid", sa.Integer(), nullable=True),
        sa.Column("integrations", sa.JSON(), nullable=True),
        sa.Column("result_files", sa.JSON(), nullable=True),
        sa.Column("from_checkpoint", sa.String(length=512), nullable=True),
        sa.Column("init_adapter", sa.Text(), nullable=True),
        sa.Column("n_checkpoints", sa.Integer(), nullable=False, server_default="3"),
        sa.Column("n_evals", sa.Integer(), nullable=True),
    )


def upgrade() -> None:
    with op.batch_alter_table("fine_tuning_jobs", schema=None) as batch_op:
        for column in job_columns():
            batch_op.add_column(column)
    with op.batch_alter_table("fine_tuning_checkpoints", schema=None) as batch_op:
        batch_op.add_column(sa.Column("adapter_path", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("fine_tuning_checkpoints", schema=None) as batch_op:
        batch_op.drop_column("adapter_path")
    with op.batch_alter_table("fine_tuning_jobs", schema=None) as batch_op:
        for column in reversed(job_columns()):
            batch_op.drop_column(column.name)
