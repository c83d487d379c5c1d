"""Terminal chat against any OpenAI-compatible server, through the official ``openai`` SDK."""

from collections.abc import Callable

import openai


class ChatError(RuntimeError):
    """The server could not be reached or refused the request; the message says why."""


class ChatSession:
    """A multi-turn conversation: every ``ask`` streams one answer and keeps the history."""

    def __init__(
        self,
        model: str,
        base_url: str,
        api_key: str | None,
        *,
        system: str | None = None,
        max_tokens: int = 256,
        temperature: float = 0.7,
    ) -> None:
        self.model = model
        self.base_url = base_url
        self.client = openai.OpenAI(base_url=base_url, api_key=api_key or "none", max_retries=0)
        self.max_tokens = max_tokens
        self.temperature = temperature
        self.messages: list[dict[str, str]] = [{"role": "system", "content": system}] if system else []

    def ask(self, prompt: str, write: Callable[[str], object]) -> str:
        """Send ``prompt``, pass each streamed text delta to ``write``, return the whole answer.

        Raises:
            ChatError: connection failure or an API error (its message included).
        """
        self.messages.append({"role": "user", "content": prompt})
        parts: list[str] = []
        try:
            stream = self.client.chat.completions.create(
                model=self.model,
                messages=self.messages,
                stream=True,
                max_tokens=self.max_tokens,
                temperature=self.temperature,
            )
            for chunk in stream:
                if chunk.choices and chunk.choices[0].delta.content:
                    parts.append(chunk.choices[0].delta.content)
                    write(chunk.choices[0].delta.content)
        except openai.APIConnectionError:
            self.messages.pop()
            raise ChatError(f"cannot reach {self.base_url}: is 'synthd serve' running?") from None
        except openai.APIStatusError as exc:
            self.messages.pop()
            raise ChatError(f"{exc.status_code}: {_message(exc)}") from None
        answer = "".join(parts)
        self.messages.append({"role": "assistant", "content": answer})
        return answer


def _message(exc: openai.APIStatusError) -> str:
    body = exc.body if isinstance(exc.body, dict) else {}
    error = body.get("error", body) if isinstance(body, dict) else {}
    return error.get("message", str(exc)) if isinstance(error, dict) else str(exc)
