"""api_keys table (hashed secrets, per-key limits); project owner of files and fine-tuning jobs

Revision ID: api_keys_and_projects
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "api_keys_and_projects"
down_revision = "0003"
branch_labels = None
depends_on = None

OWNED_TABLES = ("files", "fine_tuning_jobs")


def upgrade() -> None:
    op.create_table(
        "api_keys",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("project", sa.String(length=64), nullable=False),
        sa.Column("is_admin", sa.Boolean(), nullable=False),
        sa.Column("secret_sha256", sa.String(length=64), nullable=False),
        sa.Column("hint", sa.String(length=16), nullable=False),
        sa.Column("rpm", sa.Integer(), nullable=True),
        sa.Column("tpm", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.Integer(), nullable=False),
        sa.Column("revoked_at", sa.Integer(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("secret_sha256"),
    )
    with op.batch_alter_table("api_keys", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_api_keys_project"), ["project"], unique=False)
    for table in OWNED_TABLES:
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.add_column(sa.Column("project", sa.String(length=64), nullable=True))
            batch_op.create_index(batch_op.f(f"ix_{table}_project"), ["project"], unique=False)


def downgrade() -> None:
    for table in reversed(OWNED_TABLES):
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.drop_index(batch_op.f(f"ix_{table}_project"))
            batch_op.drop_column("project")
    with op.batch_alter_table("api_keys", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_api_keys_project"))
    op.drop_table("api_keys")
