"""livecap: self-hosted real-time live captioning.

Audio flows one way through one module per stage::

    ingest → vad → asr → captions → fanout

``server`` wires the stages to WebSockets; ``cli`` is the command line.
"""

__version__ = "0.1.0"
