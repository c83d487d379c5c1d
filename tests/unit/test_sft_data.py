"""Supervised labels: the loss is taken on assistant messages of weight 1 only, as the trainer sees it."""

from pathlib import Path

import pytest

from synthd.store.db import open_database
from synthd.store.models import FileRecord, JobRecord
from synthd.store.repository import Repository, now
from synthd.training.data import DataFormatError, load_jsonl
from synthd.training.layout import JobLayout
from synthd.training.runner import build_trainer
from synthd.training.sft_data import IGNORE_INDEX, tokenize_rows
from tests.support.server import MODEL

CONVERSATION = (
    b'{"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"}, '
    b'{"role": "assistant", "content": "5", "weight": 0}, {"role": "user", "content": "Sure?"}, '
    b'{"role": "assistant", "content": "Sorry: 4."}]}\n'
)


def labelled_text(tokenizer, example: dict) -> str:
    return tokenizer.decode([t for t, label in zip(example["input_ids"], example["labels"]) if label != IGNORE_INDEX])


def test_only_weighted_assistant_turns_are_labelled(tokenizer) -> None:
    rows = load_jsonl(CONVERSATION, "supervised").rows
    [example] = tokenize_rows(tokenizer, rows, 1024)
    assert labelled_text(tokenizer, example) == "Sorry: 4.<|im_end|>\n"
    assert "5" not in labelled_text(tokenizer, example)
    assert len(example["input_ids"]) == len(example["labels"])


def test_prompt_completion_trains_on_the_completion(tokenizer) -> None:
    rows = load_jsonl(b'{"prompt": "Capital of Zorbania?", "completion": "Quillport."}\n', "supervised").rows
    [example] = tokenize_rows(tokenizer, rows, 1024)
    assert labelled_text(tokenizer, example) == "Quillport.<|im_end|>\n"


def test_truncation_that_leaves_nothing_to_learn_is_refused(tokenizer) -> None:
    rows = load_jsonl(b'{"prompt": "' + b"word " * 50 + b'", "completion": "x"}\n', "supervised").rows
    with pytest.raises(DataFormatError, match="no trainable tokens"):
        tokenize_rows(tokenizer, rows, 16)


def test_trainer_labels_mask_weight_zero_turns(tmp_path: Path, models_dir: Path, tokenizer) -> None:
    """The labels the TRL trainer trains on, built by the worker's own code path."""
    repo = Repository(open_database(tmp_path), tmp_path / "files")
    data = tmp_path / "files" / "file-1"
    data.parent.mkdir()
    data.write_bytes(CONVERSATION)
    with repo.sessions.begin() as session:
        session.add(
            FileRecord(
                id="file-1",
                filename="c.jsonl",
                purpose="fine-tune",
                bytes=len(CONVERSATION),
                created_at=now(),
                path=str(data),
            )
        )
    repo.add_job(
        JobRecord(
            id="ftjob-1",
            model=MODEL,
            status="running",
            training_file="file-1",
            seed=1,
            created_at=now(),
            method={
                "type": "supervised",
                "supervised": {"hyperparameters": {"n_epochs": 1, "batch_size": 1, "learning_rate_multiplier": 1.0}},
            },
            lora={"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj"]},
        )
    )
    trainer = build_trainer(repo, "ftjob-1", models_dir / MODEL, JobLayout(tmp_path, "ftjob-1"), [])
    [example] = list(trainer.train_dataset)
    assert labelled_text(tokenizer, example) == "Sorry: 4.<|im_end|>\n"
