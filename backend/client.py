"""Client for the model-serving backend (`backend.server`), used by the demo and the benchmarks.

    client = BackendClient("http://127.0.0.1:8000")
    for part in client.stream("popularity", dialogue):
        print(part if isinstance(part, str) else part.items)

Errors: `BackendUnavailableError` (nothing answers at the URL, or it timed out), `RequestError`
(a 4xx: the request was wrong; the server's message says how), `ModelError` (the model failed
or could not be loaded).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from types import TracebackType
from typing import Any
from urllib.parse import quote

import httpx

from backend.server import Health, HistoryResponse, ModelInfo, SearchHit
from backend.types import Dialogue, Item, Reply, UserHistory

_NEWLINE = re.compile(r"\r\n|\r|\n")
START_HINT = "start it with `crs serve --config backend/configs/default.yaml` or point the client at a running one"


class BackendError(Exception):
    """Base class of every error the client raises."""


class BackendUnavailableError(BackendError):
    """Nothing answered at the backend URL (refused, unreachable, dropped or timed out)."""


class RequestError(BackendError):
    """The backend rejected the request (4xx); ``message`` is the server's explanation."""

    def __init__(self, status_code: int, message: str):
        self.status_code, self.message = status_code, message
        super().__init__(f"{status_code}: {message}")


class ModelError(BackendError):
    """The model failed on this request, or is not loaded (5xx, or an SSE ``error`` event)."""

    def __init__(self, message: str, status_code: int | None = None):
        self.status_code, self.message = status_code, message
        super().__init__(message)


def sse_lines(chunks: Iterable[str]) -> Iterator[str]:
    """Split decoded text chunks into lines at CR, LF or CRLF only, as the SSE format says.

    (``str.splitlines`` and httpx's ``iter_lines`` also split at U+2028 and other characters
    that may appear inside a JSON string.)
    """
    buffer = ""
    for chunk in chunks:
        buffer += chunk
        # A trailing CR may be the first half of a CRLF that the next chunk completes.
        held = buffer.endswith("\r")
        *lines, buffer = _NEWLINE.split(buffer[:-1] if held else buffer)
        yield from lines
        if held:
            buffer += "\r"
    if buffer:
        yield from _NEWLINE.split(buffer.removesuffix("\r"))


def parse_sse(lines: Iterable[str]) -> Iterator[tuple[str, str]]:
    """``(event, data)`` for each complete server-sent event in ``lines`` (comments, e.g. pings, skipped)."""
    event, data = "message", []
    for line in lines:
        if not line:
            if data:
                yield event, "\n".join(data)
            event, data = "message", []
        elif line.startswith(":"):
            continue
        else:
            key, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if key == "event":
                event = value
            elif key == "data":
                data.append(value)
    # An event cut off before its blank line is dropped, as the SSE format says.


def _server_message(response: httpx.Response) -> str:
    """The ``detail`` of a FastAPI error body, or the raw text when it is not JSON."""
    try:
        detail = response.json().get("detail")
    except (ValueError, AttributeError):
        detail = None
    if isinstance(detail, str):
        return detail
    if detail is not None:
        return json.dumps(detail)
    return response.text[:500] or response.reason_phrase


class BackendClient:
    """Typed calls to every backend route; one pooled HTTP connection set per client."""

    def __init__(self, base_url: str, timeout: float = 120.0, http: httpx.Client | None = None):
        """``timeout`` bounds connecting and each read; ``http`` injects a client (e.g. a TestClient)."""
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self._http = http or httpx.Client(
            base_url=self.base_url, timeout=httpx.Timeout(timeout, connect=min(timeout, 5.0))
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> BackendClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # ------------------------------------------------------------------ plumbing

    def _unavailable(self, err: httpx.TransportError) -> BackendUnavailableError:
        if isinstance(err, httpx.TimeoutException):
            why = f"did not answer within {self.timeout:g}s ({type(err).__name__})"
        else:
            why = f"is not reachable ({err or type(err).__name__})"
        return BackendUnavailableError(f"the CRS backend at {self.base_url} {why}; {START_HINT}")

    @staticmethod
    def _raise_for_status(response: httpx.Response) -> None:
        if response.is_success:
            return
        message = _server_message(response)
        if response.is_client_error:
            raise RequestError(response.status_code, message)
        raise ModelError(message, response.status_code)

    def _request(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TransportError as err:
            raise self._unavailable(err) from err
        self._raise_for_status(response)
        return response.json()

    @staticmethod
    def _body(
        dialogue: Dialogue, history: UserHistory | None, user_id: str | None
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"dialogue": dialogue.model_dump(mode="json")}
        if history is not None:
            # Only the UserHistory fields: a HistoryResponse's titles are not part of the request.
            body["history"] = UserHistory.model_validate(history.model_dump()).model_dump(
                mode="json"
            )
        if user_id is not None:
            body["user_id"] = user_id
        return body

    # ------------------------------------------------------------------ routes

    def health(self) -> Health:
        return Health.model_validate(self._request("GET", "/health"))

    def models(self) -> list[ModelInfo]:
        return [ModelInfo.model_validate(m) for m in self._request("GET", "/models")]

    def item(self, item_id: str) -> Item:
        return Item.model_validate(self._request("GET", f"/items/{quote(item_id, safe='')}"))

    def search(self, query: str, limit: int = 10) -> list[SearchHit]:
        """Fuzzy title search over the catalog, best first."""
        hits = self._request("GET", "/items", params={"q": query, "limit": limit})
        return [SearchHit.model_validate(h) for h in hits]

    def users(self, limit: int = 100) -> list[str]:
        return self._request("GET", "/users", params={"limit": limit})

    def history(self, user_id: str) -> HistoryResponse:
        """The user's history (a `UserHistory`) with a ``titles`` map for display."""
        return HistoryResponse.model_validate(
            self._request("GET", f"/users/{quote(user_id, safe='')}/history")
        )

    def respond(
        self,
        name: str,
        dialogue: Dialogue,
        history: UserHistory | None = None,
        user_id: str | None = None,
    ) -> Reply:
        """Model ``name``'s reply to the last user turn; ``user_id`` makes the server look up the history."""
        body = self._body(dialogue, history, user_id)
        return Reply.model_validate(
            self._request("POST", f"/models/{quote(name, safe='')}/respond", json=body)
        )

    def stream(
        self,
        name: str,
        dialogue: Dialogue,
        history: UserHistory | None = None,
        user_id: str | None = None,
    ) -> Iterator[str | Reply]:
        """Yield the reply's text deltas as they are generated, then the final `Reply`."""
        body = self._body(dialogue, history, user_id)
        try:
            with self._http.stream(
                "POST", f"/models/{quote(name, safe='')}/stream", json=body
            ) as response:
                if not response.is_success:
                    response.read()
                    self._raise_for_status(response)
                for event, data in parse_sse(sse_lines(response.iter_text())):
                    payload = json.loads(data)
                    if event == "delta":
                        yield payload["text"]
                    elif event == "reply":
                        yield Reply.model_validate(payload)
                        return
                    elif event == "error":
                        raise ModelError(payload["message"])
        except httpx.TransportError as err:
            raise self._unavailable(err) from err
        raise BackendUnavailableError(
            f"the stream from the CRS backend at {self.base_url} ended before the final reply; "
            "the server may have stopped"
        )


# What a visitor reads when the backend cannot answer; the developer's details go to the log.
OUTAGE_MESSAGE = (
    "The recommendation service is not answering right now. Please try again in a minute."
)


def plain_message(err: BackendError) -> str:
    """``err`` in words a demo visitor understands (no status codes, no commands to run)."""
    if isinstance(err, BackendUnavailableError):
        return OUTAGE_MESSAGE
    if isinstance(err, RequestError):
        if err.status_code == 413 or err.message.startswith("Message too long"):
            return err.message.split(" (", 1)[0] + "."
        if err.status_code == 422 and "max_turns" in err.message:
            return "This conversation is at its length limit. Start a new chat to go on."
        if err.status_code == 404 and "unknown model" in err.message:
            return "That model is no longer served. Reload the page to see the current models."
        return f"The message could not be sent: {err.message}"
    if err.status_code == 503:
        return "This model is not ready yet. Pick another one, or try again when it is ready."
    return "The model could not answer this time. Please try again or pick another model."
