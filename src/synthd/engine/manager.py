"""The set of models this process serves, and the async bridge to their engines."""

import asyncio
from collections.abc import AsyncIterator, Callable
from functools import partial
from pathlib import Path

from synthd.engine.detokenize import TextAssembler
from synthd.engine.loaded import LoadedModel, load_model
from synthd.engine.resolve import ModelNotFound, canonical_id, resolve_model
from synthd.engine.sampling import SamplerState, SamplingParams
from synthd.engine.sequence import Sequence, SequenceEvent


class ModelManager:
    """Loads the served models and looks them up by id (or the embedded model's hub id).

    Args:
        models_dir: where converted models live (``$SYNTHD_HOME/models``).
        dtype, max_num_seqs, max_model_len: passed to ``load_model``.
        on_finish: called with (model id, sequence) once per finished sequence (metrics).
    """

    def __init__(
        self,
        models_dir: Path,
        *,
        dtype: str = "auto",
        max_num_seqs: int = 64,
        max_model_len: int | None = None,
        on_finish: Callable[[str, Sequence], None] | None = None,
    ) -> None:
        self.models_dir = models_dir
        self._load_options = {"dtype": dtype, "max_num_seqs": max_num_seqs, "max_model_len": max_model_len}
        self._on_finish = on_finish
        self._models: dict[str, LoadedModel] = {}

    def load(self, model: str) -> LoadedModel:
        """Load ``model`` (blocking) unless it is already resident; return it.

        Raises:
            ModelNotFound: no local weights for ``model``.
        """
        model_id = canonical_id(model)
        if model_id not in self._models:
            source = resolve_model(model, self.models_dir)
            observer = partial(self._on_finish, model_id) if self._on_finish else None
            self._models[model_id] = load_model(source, on_finish=observer, **self._load_options)
        return self._models[model_id]

    def get(self, model: str) -> LoadedModel:
        """A resident model by id.

        Raises:
            ModelNotFound: the model is not served by this process.
        """
        loaded = self._models.get(canonical_id(model))
        if loaded is None:
            raise ModelNotFound(f"The model '{model}' does not exist or is not served here.")
        return loaded

    def loaded(self) -> list[LoadedModel]:
        """Resident models, in load order."""
        return list(self._models.values())

    def close(self) -> None:
        """Stop every engine."""
        for loaded in self._models.values():
            loaded.close()
        self._models.clear()


async def generate(loaded: LoadedModel, prompt_ids: list[int], params: SamplingParams) -> AsyncIterator[SequenceEvent]:
    """Submit one sequence and yield its events until the finishing one.

    Closing the iterator early (a client that went away) cancels the sequence in the engine.
    """
    loop = asyncio.get_running_loop()
    events: asyncio.Queue[SequenceEvent] = asyncio.Queue()

    def emit(event: SequenceEvent) -> None:
        if not loop.is_closed():
            loop.call_soon_threadsafe(events.put_nowait, event)

    sequence = Sequence(
        prompt_ids=prompt_ids,
        sampler=SamplerState(params),
        assembler=TextAssembler(loaded.tokenizer, params.stop),
        emit=emit,
    )
    loaded.engine.submit(sequence)
    try:
        while True:
            event = await events.get()
            yield event
            if event.finish_reason is not None:
                return
    finally:
        sequence.cancel()
