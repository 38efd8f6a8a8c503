"""The I/O of outputs: an HTTP POST, an obs-websocket request.

A sender turns one queued item into one request and raises ``DeliveryFailed``
(with what went wrong, for the operator) when the destination did not take
it; what to do then is the worker's (``runner.OutputWorker``).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Protocol
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import simpleobsws

from livecap.outputs.cea608 import air_time, roll_up
from livecap.outputs.config import OutputConfig, masked_url
from livecap.outputs.delivery import Item
from livecap.outputs.formats import Formatter

log = logging.getLogger(__name__)
REQUEST_TIMEOUT_S = 10.0
"""A request without an answer by then is given up and retried (Zoom asks for a timeout)."""
ERROR_TEXT_CHARS = 200
ERROR_BODY_BYTES = 1024
IDENTIFY_POLL_S = 0.05
AUTHENTICATION_FAILED = 4009
"""obs-websocket's close code for a wrong password (its WebSocketCloseCode enum)."""
OUTPUT_NOT_RUNNING = 501
"""obs-websocket's request status when the output (the stream) is not running (its RequestStatus enum)."""


class Sender(Protocol):
    """What an output's worker needs of a destination's I/O."""

    async def send(self, item: Item) -> None:
        """Deliver ``item``, or raise ``DeliveryFailed`` saying why not."""

    async def last_number(self) -> int | None:
        """The request number the destination last took, where it can say (Zoom); else None."""

    def pause_after(self, item: Item) -> float:
        """Seconds to wait after ``item`` before the next (a channel's pace)."""

    async def close(self) -> None: ...


class DeliveryFailed(Exception):
    """The destination did not take an item; the message says why."""


class Undeliverable(DeliveryFailed):
    """The item can never be delivered, and waiting would only make it stale: stream captions
    while OBS is not streaming (there is no stream to carry them, nor anyone reading one)."""


async def _start_of(response: aiohttp.ClientResponse) -> str:
    """The first bytes of an answer's body, as text: enough to say what went wrong, and never
    a gigabyte read into memory."""
    return (await response.content.read(ERROR_BODY_BYTES)).decode("utf-8", "replace")[:ERROR_TEXT_CHARS].strip()


class HttpSender:
    """POSTs to YouTube's, Zoom's or a webhook's URL; any answer but 2xx is a failure."""

    def __init__(self, session: aiohttp.ClientSession, formatter: Formatter) -> None:
        self.session = session
        self.formatter = formatter

    async def send(self, item: Item) -> None:
        request = self.formatter.request(item)
        try:
            async with self.session.post(request.url, data=request.body, headers=request.headers,
                                         timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S),
                                         allow_redirects=False) as response:
                if not 200 <= response.status < 300:
                    text = await _start_of(response)
                    if location := response.headers.get("Location"):
                        text = f"redirected to {masked_url(location)}; give that address instead"
                    raise DeliveryFailed(f"HTTP {response.status}" + (f": {text}" if text else ""))
        except TimeoutError:
            raise DeliveryFailed(f"no answer within {REQUEST_TIMEOUT_S:g} s") from None
        except aiohttp.ClientResponseError as error:
            raise DeliveryFailed(f"the answer is not HTTP: {error.message}"[:ERROR_TEXT_CHARS]) from None
        except aiohttp.ClientError as error:
            message = str(error).replace(self.formatter.config.url, masked_url(self.formatter.config.url))
            raise DeliveryFailed(f"{type(error).__name__}: {message}"[:ERROR_TEXT_CHARS]) from None

    async def last_number(self) -> int | None:
        """The request number the destination last took: Zoom says it (``GET …/closedcaption/seq``),
        so that posts after a restart or to a new meeting go on from there; None when it cannot say."""
        if self.formatter.config.kind != "zoom":
            return None
        parts = urlsplit(self.formatter.config.url)
        try:
            async with self.session.get(urlunsplit(parts._replace(path=parts.path.rstrip("/") + "/seq")),
                                        timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S),
                                        allow_redirects=False) as response:
                text = await _start_of(response)
                digits = text.isascii() and text.isdigit() and len(text) < 12
                return int(text) if response.status == 200 and digits else None
        except (aiohttp.ClientError, TimeoutError):
            return None

    def pause_after(self, item: Item) -> float:
        return 0.0

    async def close(self) -> None:
        """Nothing of its own to close: the session is the hub's."""


class ObsSender:
    """Requests to OBS Studio over obs-websocket v5 (``simpleobsws``): ``SendStreamCaption``
    (CEA-608 stream captions; OBS answers with an error while it is not streaming) or
    ``SetInputSettings`` of a text source. Connects on first use and again after OBS went away."""

    def __init__(self, config: OutputConfig) -> None:
        self.config = config
        self._client: simpleobsws.WebSocketClient | None = None
        self._shown: list[str] = []
        """Stream captions: the rows on screen, as OBS took them."""

    async def send(self, item: Item) -> None:
        client = await self._connected()
        screen = roll_up(self._shown, item.payload, self.config.lines)
        if self.config.mode == "captions":
            request = simpleobsws.Request("SendStreamCaption", {"captionText": "\n".join(screen)})
        else:
            request = simpleobsws.Request("SetInputSettings", {"inputName": self.config.source,
                                                               "inputSettings": {"text": item.payload}})
        try:
            response = await client.call(request, timeout=int(REQUEST_TIMEOUT_S))
        except (simpleobsws.MessageTimeout, simpleobsws.NotIdentifiedError, OSError) as error:
            await self.close()
            raise DeliveryFailed(f"OBS did not answer: {error}"[:ERROR_TEXT_CHARS]) from None
        except (KeyError, TypeError, ValueError) as error:  # an answer that is not obs-websocket's
            await self.close()
            raise DeliveryFailed(f"not an obs-websocket answer ({type(error).__name__}: {error})"[
                :ERROR_TEXT_CHARS]) from None
        if not response.ok():
            status = response.requestStatus
            if status.code == OUTPUT_NOT_RUNNING:
                raise Undeliverable("OBS is not streaming: stream captions are not kept for a stream not yet started")
            raise DeliveryFailed(f"OBS refused {request.requestType} (code {status.code}): {status.comment}")
        if self.config.mode == "captions":
            self._shown = screen  # rows OBS did not take never show up in a later caption

    async def _connected(self) -> simpleobsws.WebSocketClient:
        client = self._client
        if client is not None and client.ws_open and client.is_identified():
            return client
        await self.close()
        client = simpleobsws.WebSocketClient(url=self.config.url, password=self.config.secret or "")
        url = self.config.url
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT_S):
                await client.connect()
                while not client.is_identified() and client.ws.close_code is None:
                    await asyncio.sleep(IDENTIFY_POLL_S)
        except TimeoutError:
            await self._drop(client)
            raise DeliveryFailed(f"no answer from OBS at {url} within {REQUEST_TIMEOUT_S:g} s") from None
        except OSError as error:
            raise DeliveryFailed(f"cannot connect to OBS at {url}: {error}"[:ERROR_TEXT_CHARS]) from None
        except Exception as error:  # websockets' handshake errors (an HTTP answer, a refused subprotocol)
            raise DeliveryFailed(f"no obs-websocket at {url}: {error}"[:ERROR_TEXT_CHARS]) from None
        if not client.is_identified():
            code, reason = client.ws.close_code, client.ws.close_reason
            await self._drop(client)
            raise DeliveryFailed("OBS refused the obs-websocket password" if code == AUTHENTICATION_FAILED
                                 else f"OBS closed the connection (code {code}: {reason})"[:ERROR_TEXT_CHARS])
        self._client = client
        return client

    async def last_number(self) -> int | None:
        return None

    def pause_after(self, item: Item) -> float:
        """Stream captions wait for the 608 channel to carry the last one; a text source needs no pause."""
        return air_time("\n".join(self._shown)) if self.config.mode == "captions" else 0.0

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await self._drop(client)

    @staticmethod
    async def _drop(client: simpleobsws.WebSocketClient) -> None:
        try:
            await client.disconnect()
        except Exception:  # already gone: nothing to close
            log.debug("closing an obs-websocket connection", exc_info=True)
