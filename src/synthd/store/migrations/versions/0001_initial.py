"""files, fine-tuning jobs, events, checkpoints, models

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "files",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("filename", sa.String(length=512), nullable=False),
        sa.Column("purpose", sa.String(length=32), nullable=False),
        sa.Column("bytes", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.Integer(), nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("files", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_files_created_at"), ["created_at"], unique=False)

    op.create_table(
        "fine_tuning_jobs",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("model", sa.String(length=512), nullable=False),
        sa.Column("status", sa.String(length=32), nullable=False),
        sa.Column("method", sa.JSON(), nullable=False),
        sa.Column("lora", sa.JSON(), nullable=True),
        sa.Column("training_file", sa.String(length=64), nullable=False),
        sa.Column("validation_file", sa.String(length=64), nullable=True),
        sa.Column("suffix", sa.String(length=64), nullable=True),
        sa.Column("seed", sa.Integer(), nullable=False),
        sa.Column("metadata", sa.JSON(), nullable=True),
        sa.Column("gpu_preference", sa.String(length=128), nullable=True),
        sa.Column("gpu", sa.String(length=64), nullable=True),
        sa.Column("fine_tuned_model", sa.String(length=512), nullable=True),
        sa.Column("trained_tokens", sa.Integer(), nullable=True),
        sa.Column("error", sa.JSON(), nullable=True),
        sa.Column("created_at", sa.Integer(), nullable=False),
        sa.Column("started_at", sa.Integer(), nullable=True),
        sa.Column("finished_at", sa.Integer(), nullable=True),
        sa.Column("estimated_finish", sa.Integer(), nullable=True),
        sa.Column("cancel_requested", sa.Boolean(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("fine_tuning_jobs", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_fine_tuning_jobs_created_at"), ["created_at"], unique=False)
        batch_op.create_index(batch_op.f("ix_fine_tuning_jobs_status"), ["status"], unique=False)

    op.create_table(
        "models",
        sa.Column("id", sa.String(length=512), nullable=False),
        sa.Column("base_model", sa.String(length=512), nullable=False),
        sa.Column("job_id", sa.String(length=64), nullable=True),
        sa.Column("adapter_path", sa.Text(), nullable=False),
        sa.Column("created_at", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_table(
        "fine_tuning_checkpoints",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("job_id", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.Integer(), nullable=False),
        sa.Column("step_number", sa.Integer(), nullable=False),
        sa.Column("metrics", sa.JSON(), nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(["job_id"], ["fine_tuning_jobs.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("fine_tuning_checkpoints", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_fine_tuning_checkpoints_job_id"), ["job_id"], unique=False)

    op.create_table(
        "fine_tuning_events",
        sa.Column("seq", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("job_id", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.Integer(), nullable=False),
        sa.Column("level", sa.String(length=16), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("type", sa.String(length=16), nullable=False),
        sa.Column("data", sa.JSON(), nullable=True),
        sa.ForeignKeyConstraint(["job_id"], ["fine_tuning_jobs.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("seq"),
        sa.UniqueConstraint("id"),
    )
    with op.batch_alter_table("fine_tuning_events", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_fine_tuning_events_job_id"), ["job_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("fine_tuning_events", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_fine_tuning_events_job_id"))

    op.drop_table("fine_tuning_events")
    with op.batch_alter_table("fine_tuning_checkpoints", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_fine_tuning_checkpoints_job_id"))

    op.drop_table("fine_tuning_checkpoints")
    op.drop_table("models")
    with op.batch_alter_table("fine_tuning_jobs", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_fine_tuning_jobs_status"))
        batch_op.drop_index(batch_op.f("ix_fine_tuning_jobs_created_at"))

    op.drop_table("fine_tuning_jobs")
    with op.batch_alter_table("files", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_files_created_at"))

    op.drop_table("files")
