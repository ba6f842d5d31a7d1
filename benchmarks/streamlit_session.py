"""A Streamlit session driven over its own WebSocket protocol, with nothing drawn: a stand-in for a browser whose
drawing happens on another machine (a visitor's laptop), so that a load test times the server alone.

It speaks what the Streamlit frontend speaks on ``/_stcore/stream``: ``BackMsg.rerun_script`` with the page, the
address and the widget states out; ``ForwardMsg`` deltas, address changes and ``script_finished`` back. It keeps
the last proto of every element by its delta path, so a page's sliders and metrics can be read, and the widget
states of what it changed, which it sends with every rerun as a browser does.
"""

from __future__ import annotations

import time

from streamlit.proto.BackMsg_pb2 import BackMsg
from streamlit.proto.ForwardMsg_pb2 import ForwardMsg
from streamlit.proto.WidgetStates_pb2 import WidgetState

FINISHED_OK = {ForwardMsg.FINISHED_SUCCESSFULLY, ForwardMsg.FINISHED_FRAGMENT_RUN_SUCCESSFULLY}


class StreamlitSession:
    """One session of a running app. Use ``async with StreamlitSession(url, page, query) as session``."""

    def __init__(self, url: str, page: str, query_string: str = ""):
        self.url, self.page, self.query_string = url, page, query_string
        self.elements: dict[tuple[int, ...], object] = {}  # delta path -> Element proto, as last drawn
        self.widget_states: dict[str, WidgetState] = {}
        self._socket = None

    async def __aenter__(self) -> StreamlitSession:
        from websockets.asyncio.client import connect

        stream = self.url.replace("http://", "ws://") + "/_stcore/stream"
        self._socket = await connect(stream, subprotocols=["streamlit"], origin=self.url, max_size=None)
        await self.rerun()
        return self

    async def __aexit__(self, *exc) -> None:
        await self._socket.close()

    async def rerun(self, timeout: float = 600.0) -> float:
        """Ask for a script run with the current widget states; wait until it finishes. Seconds it took."""
        message = BackMsg()
        state = message.rerun_script
        state.query_string, state.page_name = self.query_string, self.page
        state.widget_states.widgets.extend(self.widget_states.values())
        started = time.perf_counter()
        await self._socket.send(message.SerializeToString())
        await self._until_finished(timeout)
        return time.perf_counter() - started

    async def _until_finished(self, timeout: float) -> None:
        import asyncio

        deadline = time.perf_counter() + timeout
        while True:
            raw = await asyncio.wait_for(self._socket.recv(), max(0.0, deadline - time.perf_counter()))
            message = ForwardMsg()
            message.ParseFromString(raw)
            kind = message.WhichOneof("type")
            if kind == "delta" and message.delta.WhichOneof("type") == "new_element":
                self.elements[tuple(message.metadata.delta_path)] = message.delta.new_element
            elif kind == "page_info_changed":
                self.query_string = message.page_info_changed.query_string
            elif kind == "script_finished":
                if message.script_finished not in FINISHED_OK:
                    raise RuntimeError(f"the script run ended with {ForwardMsg.ScriptFinishedStatus.Name(message.script_finished)}")
                return

    def find(self, kind: str, label_starts: str):
        """The last drawn element of ``kind`` ("slider", "metric", ...) whose label starts with ``label_starts``."""
        for element in self.elements.values():
            if element.WhichOneof("type") == kind and getattr(element, kind).label.startswith(label_starts):
                return getattr(element, kind)
        raise LookupError(f"no {kind} labelled '{label_starts}…' on the page")

    def set_slider(self, slider, values: list[float]) -> None:
        """What moving ``slider``'s thumbs to ``values`` sends with the next rerun."""
        state = WidgetState(id=slider.id)
        state.double_array_value.data.extend(values)
        self.widget_states[slider.id] = state
