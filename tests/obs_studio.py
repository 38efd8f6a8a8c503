"""A real OBS Studio for tests: headless under Xvfb, streaming to an RTMP receiver on loopback
(ffmpeg), and a reader of the CEA-608 captions in what it received.

Facts this rests on (OBS 29.0.2, Debian's ``obs-studio``, checked on this machine):
- obs-websocket 5.1 reads its settings from ``global.ini``'s ``[OBSWebSocket]``; ``FirstRun`` and
  ``LastVersion`` there keep the auto-configuration wizard away; Mesa's llvmpipe renders.
- In simple output mode with a custom server OBS sets no keyframe interval: ``keyint`` is given.
- OBS puts each ``SendStreamCaption`` in the next frame as one pop-on 608 caption (it wraps at 32
  columns and cuts at 128 bytes); it appends the caption SEI after the picture, where ffmpeg's
  decoder does not read it from FLV, so the receiver writes MPEG-TS, whose parser re-splits the
  access units and lets the lavfi ``subcc`` output see it (with no timestamps, in frame order).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import secrets
import signal
import subprocess
from pathlib import Path

import simpleobsws

from benchmarks.live import free_port

PROFILE = "livecap"
CANVAS = (320, 240)
FPS = 10
"""Small and slow: the picture does not matter, and x264 at 320x240, 10 fps costs ~4% of a core."""


def write_config(home: Path, websocket_port: int, password: str) -> None:
    """OBS settings that start it with no dialog, a websocket server, x264 at a small canvas, and a
    scene holding one text source, ``Captions``."""
    config = home / ".config" / "obs-studio"
    profile, scenes = config / "basic" / "profiles" / PROFILE, config / "basic" / "scenes"
    profile.mkdir(parents=True)
    scenes.mkdir(parents=True)
    (config / "global.ini").write_text(f"""[General]
FirstRun=true
LastVersion={(29 << 24) | 2}
EnableAutoUpdates=false
ConfirmOnExit=false
[BasicWindow]
WarnBeforeStartingStream=false
WarnBeforeStoppingStream=false
SysTrayEnabled=false
[Basic]
Profile={PROFILE}
ProfileDir={PROFILE}
SceneCollection={PROFILE}
SceneCollectionFile={PROFILE}
[OBSWebSocket]
FirstLoad=false
ServerEnabled=true
ServerPort={websocket_port}
AlertsEnabled=false
AuthRequired=true
ServerPassword={password}
""")
    (profile / "basic.ini").write_text(f"""[General]
Name={PROFILE}
[Video]
BaseCX={CANVAS[0]}
BaseCY={CANVAS[1]}
OutputCX={CANVAS[0]}
OutputCY={CANVAS[1]}
FPSType=1
FPSInt={FPS}
[Output]
Mode=Simple
[SimpleOutput]
StreamEncoder=x264
VBitrate=300
ABitrate=64
UseAdvanced=true
Preset=ultrafast
x264Settings=keyint={2 * FPS}
""")
    item = {"name": "Captions", "id": 1, "visible": True, "pos": {"x": 0, "y": 0}, "scale": {"x": 1, "y": 1}}
    (scenes / f"{PROFILE}.json").write_text(json.dumps({
        "name": PROFILE, "current_scene": "Scene", "current_program_scene": "Scene",
        "scene_order": [{"name": "Scene"}], "transitions": [], "groups": [], "modules": {},
        "sources": [
            {"id": "scene", "versioned_id": "scene", "name": "Scene", "settings": {"id_counter": 1, "items": [item]}},
            {"id": "text_ft2_source", "versioned_id": "text_ft2_source_v2", "name": "Captions",
             "settings": {"text": "", "font": {"face": "DejaVu Sans", "size": 24}}},
        ]}))


class ObsStudio:
    """OBS Studio under its own Xvfb, with a throwaway home; ``received`` is the stream as the
    RTMP receiver wrote it once ``stop_stream`` returned."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.home = directory / "home"
        self.websocket_port, self.rtmp_port = free_port(), free_port()
        self.password = secrets.token_hex(8)
        self.received = directory / "received.ts"
        self._xvfb: subprocess.Popen[bytes] | None = None
        self._obs: subprocess.Popen[bytes] | None = None
        self._receiver: subprocess.Popen[bytes] | None = None
        self.client: simpleobsws.WebSocketClient | None = None

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.websocket_port}"

    async def start(self) -> None:
        if self._xvfb is None:
            write_config(self.home, self.websocket_port, self.password)
            read, write = os.pipe()  # Xvfb picks a free display and writes its number here
            self._xvfb = subprocess.Popen(["Xvfb", "-displayfd", str(write), "-screen", "0", "1024x768x24",
                                           "-nolisten", "tcp", "-noreset"], pass_fds=(write,),
                                          start_new_session=True, stderr=subprocess.DEVNULL)
            os.close(write)
            with os.fdopen(read) as pipe:
                self.display = ":" + (await asyncio.to_thread(pipe.readline)).strip()
        runtime = self.directory / "xdg"
        runtime.mkdir(mode=0o700, exist_ok=True)
        env = {**os.environ, "HOME": str(self.home), "DISPLAY": self.display, "LIBGL_ALWAYS_SOFTWARE": "1",
               "XDG_RUNTIME_DIR": str(runtime), "XDG_CONFIG_HOME": str(self.home / ".config"),
               "QT_QPA_PLATFORM": "xcb"}
        with open(self.directory / "obs.log", "ab") as log:
            self._obs = subprocess.Popen(["obs", "--disable-shutdown-check", "--disable-updater", "--multi"],
                                         env=env, cwd=self.home, start_new_session=True, stdout=log,
                                         stderr=subprocess.STDOUT)
        self.client = await self._connect()

    async def _connect(self, limit_s: float = 60.0) -> simpleobsws.WebSocketClient:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + limit_s
        while loop.time() < deadline:
            assert self._obs is not None and self._obs.poll() is None, (self.directory / "obs.log").read_text()[-2000:]
            client = simpleobsws.WebSocketClient(url=self.url, password=self.password)
            try:
                await client.connect()
                if await client.wait_until_identified(timeout=5):
                    return client
            except OSError:
                pass
            await asyncio.sleep(0.2)
        raise TimeoutError(f"obs-websocket not up after {limit_s:.0f} s")

    async def call(self, request: str, data: dict[str, object] | None = None) -> dict[str, object]:
        assert self.client is not None
        response = await self.client.call(simpleobsws.Request(request, data))
        assert response.ok(), f"{request}: {response.requestStatus}"
        return response.responseData or {}

    async def start_stream(self) -> None:
        """Stream to an ffmpeg RTMP receiver that writes what it gets to ``received``."""
        with open(self.directory / "receiver.log", "ab") as log:
            self._receiver = subprocess.Popen(
                ["ffmpeg", "-hide_banner", "-nostdin", "-y", "-listen", "1", "-timeout", "60",
                 "-i", f"rtmp://127.0.0.1:{self.rtmp_port}/live/test", "-c", "copy", "-f", "mpegts",
                 str(self.received)], start_new_session=True, stdout=subprocess.DEVNULL, stderr=log)
        for _ in range(100):  # a test connection would use up the receiver's one accept: ask the kernel
            if _listening(self.rtmp_port):
                break
            await asyncio.sleep(0.1)
        await self.call("SetStreamServiceSettings", {"streamServiceType": "rtmp_custom", "streamServiceSettings": {
            "server": f"rtmp://127.0.0.1:{self.rtmp_port}/live", "key": "test"}})
        await self.call("StartStream")
        for _ in range(200):
            status = await self.call("GetStreamStatus")
            if status["outputActive"] and status["outputBytes"]:
                return
            await asyncio.sleep(0.1)
        raise TimeoutError("OBS did not start streaming")

    async def stop_stream(self) -> None:
        await self.call("StopStream")
        assert self._receiver is not None
        await asyncio.to_thread(self._receiver.wait, 30)

    async def stop_obs(self) -> None:
        """OBS quits (as when an operator restarts it); Xvfb stays for the next ``start``."""
        if self.client is not None:
            await self.client.disconnect()
            self.client = None
        await asyncio.to_thread(_stop, self._obs, signal.SIGINT)

    async def close(self) -> None:
        await self.stop_obs()
        for process in (self._receiver, self._xvfb):
            await asyncio.to_thread(_stop, process, signal.SIGTERM)


def _listening(port: int) -> bool:
    """Whether a socket listens on 127.0.0.1:``port`` (``/proc/net/tcp``, state 0A: LISTEN)."""
    entries = Path("/proc/net/tcp").read_text().splitlines()[1:]
    return any(fields[1] == f"0100007F:{port:04X}" and fields[3] == "0A" for fields in map(str.split, entries))


def _stop(process: subprocess.Popen[bytes] | None, sig: signal.Signals) -> None:
    if process is None or process.poll() is not None:
        return
    os.killpg(process.pid, sig)
    try:
        process.wait(15)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


# ---- reading CEA-608 back (CEA-608-E: control codes §6.4, character sets §6.4.1-6.4.3, Annex B PAC table)

BASIC = {0x2a: "á", 0x5c: "é", 0x5e: "í", 0x5f: "ó", 0x60: "ú", 0x7b: "ç", 0x7c: "÷", 0x7d: "Ñ", 0x7e: "ñ", 0x7f: "■"}
SPECIAL = "®°½¿™¢£♪à\u00a0èâêîôû"
EXTENDED = {0x12: "ÁÉÓÚÜü‘¡*'—©℠•“”ÀÂÇÈÊËëÎÏïÔÙùÛ«»", 0x13: "ÃãÍÌìÒòÕõ{}\\^_|~ÄäÖöß¥¤│ÅåØø┌┐└┘"}
ERASE_NON_DISPLAYED = 0x2E
END_OF_CAPTION = 0x2F


def caption_bytes(stream: Path) -> list[bytes]:
    """The cc_data of each frame that carries captions, in frame order (ffmpeg's lavfi ``subcc``)."""
    answer = subprocess.run(["ffprobe", "-v", "error", "-f", "lavfi", "-i", f"movie={stream}[out0+subcc]",
                             "-select_streams", "s", "-show_packets", "-show_data", "-of", "json"],
                            capture_output=True, text=True, check=True, timeout=120)
    packets = json.loads(answer.stdout).get("packets", [])
    return [bytes.fromhex("".join(re.findall(r"^[0-9a-f]{8}: ((?:[0-9a-f]{2,4} ?)+)", packet["data"], re.M))
                        .replace(" ", "")) for packet in packets]


def read_captions(stream: Path) -> list[list[str]]:
    """The pop-on captions (CC1) in ``stream``: the rows of each caption shown, in order (OBS may send
    the last one again, at a keyframe: that repeat is not a caption of its own)."""
    captions: list[list[str]] = []
    rows: list[str] = []
    last_control: tuple[int, int] | None = None
    for data in caption_bytes(stream):
        for i in range(0, len(data) - 2, 3):
            header, first, second = data[i], data[i + 1] & 0x7F, data[i + 2] & 0x7F
            if not header & 0x04 or header & 0x03 != 0 or (first, second) == (0, 0):  # field 1 only
                continue
            if 0x10 <= first <= 0x1F:
                if (first, second) == last_control:  # control codes are sent twice
                    last_control = None
                    continue
                last_control = (first, second)
                channel_free = first & 0x17  # CC1/CC3 and CC2/CC4 differ in bit 3
                if channel_free in (0x14, 0x15) and second < 0x40:  # miscellaneous control codes
                    if second == ERASE_NON_DISPLAYED:  # a new caption is loaded
                        rows = []
                    elif second == END_OF_CAPTION and [row.strip() for row in rows] != (captions or [[]])[-1]:
                        captions.append([row.strip() for row in rows])  # one sent again changes nothing shown
                    continue
                if second >= 0x40:  # preamble address code: a new row
                    rows.append("")
                    continue
                rows = rows or [""]
                if channel_free == 0x11 and 0x30 <= second <= 0x3F:
                    rows[-1] += SPECIAL[second - 0x30]
                elif channel_free in (0x12, 0x13) and 0x20 <= second <= 0x3F:  # replaces the fallback before it
                    rows[-1] = rows[-1][:-1] + EXTENDED[channel_free][second - 0x20]
                elif channel_free == 0x11 and 0x20 <= second <= 0x2F:  # mid-row style: a space
                    rows[-1] += " "
                continue
            last_control = None
            for code in (first, second):
                if code >= 0x20 and rows:
                    rows[-1] += BASIC.get(code, chr(code))
    return captions
