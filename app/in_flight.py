"""Replies still streaming into a page session, so a reset can stop them and wait for them.

Gradio may deliver an update that a streaming reply had already computed *after* the output of
a reset clicked meanwhile (New chat, New round), which redraws the conversation just cleared.
Cancelling the event does not help: updates already queued still arrive. So a reset marks every
stream of the session abandoned (each stops at its next step without yielding) and waits until
they have stopped; its own output is then the last to arrive.

Gradio may also *start* a send after a reset clicked later (each event has its own queue), so
both carry the browser's click time (``CLICK_TIME_JS``) and a send clicked before the session's
last reset starts abandoned.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

# Event `js` that replaces the last input (a hidden gr.Number) with the browser's click time in ms.
CLICK_TIME_JS = "(...inputs) => [...inputs.slice(0, -1), Date.now()]"
# Gradio sends a stopped stream's last messages just after its generator ends; let them go first.
SETTLE_S = 0.3
RESET_WAIT_S = 30.0  # a reply stuck longer than this (a hung backend) no longer holds a reset up


@dataclass(eq=False)
class Stream:
    """One streaming reply; ``abandoned`` once a reset was clicked: stop without yielding."""

    abandoned: bool = False


class InFlight:
    """One page session's streaming replies; kept in a ``gr.State``."""

    def __init__(self) -> None:
        self._streams: set[Stream] = set()
        self._changed = threading.Condition()
        self._reset_at = 0.0

    def __deepcopy__(self, memo: dict) -> InFlight:
        return InFlight()  # gr.State deep-copies its initial value into each session

    @contextmanager
    def streaming(self, clicked_at: float | None = None) -> Iterator[Stream]:
        """Wrap a reply's generator body: tracked until it returns or is closed. A send clicked
        (``clicked_at``, ms) before the last reset starts abandoned; an API call never does."""
        stream = Stream()
        with self._changed:  # atomic with reset(): a reset either sees this stream or came first
            stream.abandoned = clicked_at is not None and clicked_at < self._reset_at
            self._streams.add(stream)
        try:
            yield stream
        finally:
            with self._changed:
                self._streams.discard(stream)
                self._changed.notify_all()

    def reset(self, clicked_at: float | None, timeout: float = RESET_WAIT_S) -> bool:
        """Abandon every stream, note a reset clicked at ``clicked_at`` (ms), and block until
        the streams have stopped (True) or ``timeout`` seconds pass (False)."""
        with self._changed:
            self._reset_at = max(self._reset_at, clicked_at or 0.0)
            stopping = bool(self._streams)
            for stream in self._streams:
                stream.abandoned = True
            stopped = self._changed.wait_for(lambda: not self._streams, timeout)
        if stopping:
            time.sleep(SETTLE_S)
        return stopped
