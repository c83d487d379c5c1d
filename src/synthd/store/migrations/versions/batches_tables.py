"""batches (owned by a project) and batch_results: OpenAI's Batch API

Revision ID: batches_tables
Revises: api_keys_and_projects
"""

import sqlalchemy as sa
from alembic import op

revision = "batches_tables"
down_revision = "api_keys_and_projects"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "batches",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("endpoint", sa.String(length=64), nullable=False),
        sa.Column("input_file_id", sa.String(length=64), nullable=False),
        sa.Column("completion_window", sa.String(length=16), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("model", sa.String(length=512), nullable=True),
        sa.Column("output_file_id", sa.String(length=64), nullable=True),
        sa.Column("error_file_id", sa.String(length=64), nullable=True),
        sa.Column("errors", sa.JSON(), nullable=True),
        sa.Column("metadata", sa.JSON(), nullable=True),
        sa.Column("project", sa.String(length=64), nullable=True),
        sa.Column("total", sa.Integer(), nullable=False),
        sa.Column("completed", sa.Integer(), nullable=False),
        sa.Column("failed", sa.Integer(), nullable=False),
        sa.Column("input_tokens", sa.Integer(), nullable=False),
        sa.Column("output_tokens", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.Integer(), nullable=False),
        sa.Column("created_ns", sa.BigInteger(), nullable=False),
        sa.Column("expires_at", sa.Integer(), nullable=False),
        sa.Column("in_progress_at", sa.Integer(), nullable=True),
        sa.Column("finalizing_at", sa.Integer(), nullable=True),
        sa.Column("completed_at", sa.Integer(), nullable=True),
        sa.Column("failed_at", sa.Integer(), nullable=True),
        sa.Column("expired_at", sa.Integer(), nullable=True),
        sa.Column("cancelling_at", sa.Integer(), nullable=True),
        sa.Column("cancelled_at", sa.Integer(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("batches", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_batches_status"), ["status"], unique=False)
        batch_op.create_index(batch_op.f("ix_batches_created_ns"), ["created_ns"], unique=False)
        batch_op.create_index(batch_op.f("ix_batches_project"), ["project"], unique=False)

    op.create_table(
        "batch_results",
        sa.Column("seq", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("batch_id", sa.String(length=64), nullable=False),
        sa.Column("line", sa.Integer(), nullable=False),
        sa.Column("ok", sa.Boolean(), nullable=False),
        sa.Column("record", sa.JSON(), nullable=False),
        sa.ForeignKeyConstraint(["batch_id"], ["batches.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("seq"),
        sa.UniqueConstraint("batch_id", "line"),
    )
    with op.batch_alter_table("batch_results", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_batch_results_batch_id"), ["batch_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("batch_results", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_batch_results_batch_id"))
    op.drop_table("batch_results")
    with op.batch_alter_table("batches", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_batches_project"))
        batch_op.drop_index(batch_op.f("ix_batches_created_ns"))
        batch_op.drop_index(batch_op.f("ix_batches_status"))
    op.drop_table("batches")
