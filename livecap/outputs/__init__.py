"""Room outputs: a room's captions sent on to where a stream's viewers read them.

Each output is a destination an operator configured for a room (its
settings' ``outputs``): OBS Studio (CEA-608 stream captions or a text
source), YouTube Live's caption ingestion, Zoom's caption API, or a webhook.
Modules, in the order captions flow through them: ``config`` (what an operator
sets), ``formats`` (caption events into each destination's requests, with
``cea608`` for stream captions), ``delivery`` (each output's queue, retries
and health), ``senders`` (the HTTP and obs-websocket I/O), ``runner`` (one
task per output, fed by the rooms).
"""
