"""The application's shared state, as typed aiohttp ``AppKey``s.

Every route module (``server``, ``pages``, ``operator``) reads the options,
keys, scheduler and rooms from ``request.app`` through these keys, so none
of them imports another to find them (aiohttp's advice for typed app state).
"""

from __future__ import annotations

import weakref
from collections import Counter

from aiohttp import web

from livecap.asr.scheduler import Scheduler
from livecap.auth import Keys
from livecap.config import ServerOptions
from livecap.metrics import Metrics
from livecap.rooms import RoomRegistry

OPTIONS = web.AppKey("options", ServerOptions)
KEYS = web.AppKey("keys", Keys)
SCHEDULER = web.AppKey("scheduler", Scheduler)
ROOMS = web.AppKey("rooms", RoomRegistry)
CONNECTIONS = web.AppKey("connections", Counter[str])
"""Open WebSocket connections per client address."""
SOCKETS = web.AppKey("sockets", weakref.WeakSet[web.WebSocketResponse])
METRICS = web.AppKey("metrics", Metrics)
STARTED = web.AppKey("started", float)
"""Monotonic time the application was created."""
