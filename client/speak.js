// /speak/ROOM?token=PUBLISHER_KEY[&language=CODE|auto]: send this browser's microphone to the room.
// The speaker may say which language they speak and ask for an English
// translation track (sent in "start"; left out, the room's settings apply);
// the choice is kept on this device, and ?language= (a link prepared for
// one speaker) overrides the kept language.
import {
  CaptionList, Connection, knownLanguage, languageOptions, listItem, params, prefs, room, showRoomState, socketUrl,
} from "/static/captions.js";

const $ = (id) => document.getElementById(id);
const PROCESSING = ["echoCancellation", "noiseSuppression", "autoGainControl"];
const MAX_QUEUED = 1500; // 20 ms frames kept while the connection is down (30 s), sent paced after it
const CATCH_UP_BURST = 400; // frames sent at once after a reconnection: 8 s, within the server's 10 s burst
const CATCH_UP_STEP = 20; // then frames every 250 ms: 1.6× real time, under the server's sustained 2×

document.title = `Speak · ${room} · livecap`;
$("room").textContent = room;
$("key").value = params.get("token") ?? "";
$("key-field").hidden = params.has("token");
$("language").append(...languageOptions());
$("language").value = knownLanguage(params.get("language")) ?? knownLanguage(prefs.get("speak.language")) ?? "";
$("translate").checked = prefs.get("speak.translate") === "en";

const captions = new CaptionList({ log: $("log"), live: $("live"), createItem: listItem });

let session = null; // the running capture: {stream, context, connection, …}

function status(state, text) {
  $("status").dataset.state = state;
  $("status-text").textContent = text;
}

function say(text) {
  $("message").hidden = !text;
  $("message").textContent = text ?? "";
}

function running(on) {
  $("start").disabled = on;
  $("stop").disabled = !on;
  for (const control of [$("device"), $("key"), $("language"), $("translate"), ...PROCESSING.map($)]) {
    control.disabled = on;
  }
}

/** The start message: the worklet's format, and the language and translation chosen ("": the room's). */
function startMessage() {
  const message = { type: "start", format: "s16le", sample_rate: 16000, channels: 1 };
  if ($("language").value) message.language = $("language").value;
  if ($("translate").checked) message.translate = "en";
  return message;
}

/** What to tell the speaker when the microphone cannot be opened. */
function microphoneProblem(error) {
  switch (error.name) {
    case "NotAllowedError":
    case "SecurityError":
      return "The microphone is blocked. Allow it for this site (the icon in the address bar), then press Start.";
    case "NotFoundError":
    case "OverconstrainedError":
      return "No microphone found. Plug one in, or pick another under Microphone options.";
    case "NotReadableError":
      return "The microphone could not be opened: another application may be using it.";
    default:
      return `The microphone could not be opened (${error.message || error.name}).`;
  }
}

/** What to tell the speaker about an error event from the server. */
function serverProblem(error) {
  if (error?.code === "unauthorized") {
    $("key-field").hidden = false;
    return `The publisher key was not accepted for room “${room}”. ` +
      `Paste the key that “livecap keys ${room}” prints, then press Start.`;
  }
  const message = error?.message ?? "the server refused the connection";
  return message[0].toUpperCase() + message.slice(1) + ".";
}

async function listMicrophones() {
  const devices = (await navigator.mediaDevices.enumerateDevices()).filter((d) => d.kind === "audioinput");
  const select = $("device");
  const chosen = select.value;
  select.replaceChildren(new Option("Default microphone", ""),
    ...devices.filter((d) => d.deviceId && d.deviceId !== "default")
      .map((d, i) => new Option(d.label || `Microphone ${i + 1}`, d.deviceId)));
  select.value = chosen;
}

async function start() {
  const key = $("key").value.trim();
  if (!key) {
    say("Paste the publisher key first.");
    $("key").focus();
    return;
  }
  say(null);
  running(true);
  status("connecting", "Starting…");
  const constraints = Object.fromEntries(PROCESSING.map((name) => [name, $(name).checked]));
  if ($("device").value) constraints.deviceId = { exact: $("device").value };
  const begin = startMessage(); // the same after a reconnection, which sends again what was not acknowledged
  // The socket opens while the browser asks for the microphone: a wrong key
  // shows at once, and speech from the first moment is queued, not lost.
  // Frames sent wait in `unacked` until the server says their captions are
  // safe (`ack`); after a lost connection they go first, with "resend".
  const current = session = { queue: [], unacked: [], sent: 0, acked: 0, ready: false, resend: null, level: 0 };
  current.connection = new Connection(
    () => socketUrl(`/ws/ingest/${encodeURIComponent(room)}`, { token: key }),
    {
      onOpen: (ws) => ws.send(JSON.stringify(current.resend ? { ...begin, resend: current.resend } : begin)),
      onMessage: (message) => received(current, message),
      onState: (state, error) => connectionState(current, state, error),
    },
  );
  try {
    current.stream = await navigator.mediaDevices.getUserMedia({ audio: constraints });
  } catch (error) {
    if (session === current) finish(microphoneProblem(error));
    return;
  }
  if (session !== current) { // stopped or refused while the browser asked
    current.stream.getTracks().forEach((track) => track.stop());
    return;
  }
  // Created only now: an AudioContext made before getUserMedia resolves may
  // stay suspended. Its rate is the device's; the worklet resamples.
  current.context = new AudioContext();
  try {
    await current.context.audioWorklet.addModule("/static/pcm-worklet.js");
  } catch (error) {
    if (session === current) finish(`The audio processing could not be loaded (${error.message}).`);
    return;
  }
  const node = new AudioWorkletNode(current.context, "pcm-16k", { numberOfInputs: 1, numberOfOutputs: 0 });
  node.port.onmessage = ({ data }) => {
    current.level = Math.max(current.level, data.rms);
    send(current, data.pcm);
  };
  current.context.createMediaStreamSource(current.stream).connect(node);
  listMicrophones();
  requestAnimationFrame(() => meter(current));
}

function send(current, pcm) {
  if (current.ready && current.connection.open && !current.queue.length) {
    transmit(current, pcm);
    return;
  }
  current.queue.push(pcm);
  if (current.queue.length > MAX_QUEUED) current.queue.shift();
}

/** Send what waited while there was no connection: a burst, then faster than real time until caught up. */
function catchUp(current, budget = CATCH_UP_BURST) {
  if (session !== current || !current.ready || !current.connection.open) return;
  for (const pcm of current.queue.splice(0, budget)) transmit(current, pcm);
  if (current.queue.length) setTimeout(() => catchUp(current, CATCH_UP_STEP), 250);
}

/** Send a frame, keeping it (and where it ends in the session's audio) until the server acknowledges it. */
function transmit(current, pcm) {
  current.connection.send(pcm);
  current.sent += pcm.byteLength / 2;
  current.unacked.push({ pcm, end: current.sent });
  if (current.unacked.length > MAX_QUEUED) current.unacked.shift();
}

function acknowledged(current, samples) {
  current.acked = Math.max(current.acked, samples);
  while (current.unacked.length && current.unacked[0].end <= samples) current.unacked.shift();
}

/** Drop from the front of the queue the audio the server says it has already (`skip_ms` of `ready`). */
function skip(current, samples) {
  while (samples > 0 && current.queue.length) {
    const frame = current.queue[0];
    const length = frame.byteLength / 2;
    if (length <= samples) {
      current.queue.shift();
    } else {
      current.queue[0] = frame.slice(samples * 2);
    }
    samples -= length;
  }
}

function received(current, message) {
  if (message.type === "ready") {
    current.connection.healthy();
    current.ready = true;
    if (current.resend) skip(current, (message.skip_ms ?? 0) * 16);
    current.resend = null;
    current.session = message.session;
    current.sent = current.acked = 0; // acks count from the session's first sample
    status("open", "Sending audio");
    catchUp(current);
  } else if (message.type === "ack" && message.session === current.session) {
    acknowledged(current, message.audio_ms * 16);
  } else if (message.type === "stopped") {
    current.stopped?.();
  } else if (message.type === "caption" && message.kind !== "translation") {
    captions.apply(message); // the speaker checks what was heard; translations are the English track's
  } else if (message.type === "room") {
    showRoomState(message);
  }
}

function connectionState(current, state, error) {
  if (state === "reconnecting") {
    if (current.ready) { // what the lost session may not have made safe goes first
      current.queue = [...current.unacked.map((frame) => frame.pcm), ...current.queue].slice(-MAX_QUEUED);
      current.unacked = [];
      current.resend = { session: current.session, from_ms: Math.floor(current.acked / 16) };
    }
    current.ready = false;
    status("reconnecting", `Reconnecting${error ? ` (${error.message})` : ""}… audio is kept for 10 s`);
  } else if (state === "failed" && session === current) {
    finish(serverProblem(error));
  }
}

/** Input level as a bar from -60 to 0 dBFS: the loudest 20 ms frame since the last paint, falling back
 * slowly (about 1 s from full to empty) like a peak meter, so that it does not flicker. */
function meter(current) {
  const db = 20 * Math.log10(Math.max(current.level, 1e-6));
  current.shown = Math.max(Math.min(1, Math.max(0, (db + 60) / 60)), (current.shown ?? 0) - 0.016);
  $("level").style.transform = `scaleX(${current.shown})`;
  $("level").dataset.loud = db > -6;
  current.level = 0;
  if (session === current) requestAnimationFrame(() => meter(current));
}

/** Stop capturing; `problem` is shown when the stop was not the speaker's choice. */
function finish(problem) {
  const current = session;
  session = null;
  current?.stream?.getTracks().forEach((track) => track.stop());
  current?.context?.close();
  current?.connection.close();
  $("level").style.transform = "scaleX(0)";
  running(false);
  if (problem) {
    status("failed", "Not sending");
    say(problem);
  } else {
    status("closed", "Stopped");
  }
}

/** The server finalises the last sentence before it answers "stopped". */
async function stop() {
  const current = session;
  if (!current) return;
  $("stop").disabled = true;
  current.stream?.getTracks().forEach((track) => track.stop());
  // Frames still on their way from the worklet must not follow "stop".
  const wasReady = current.ready;
  current.ready = false;
  if (wasReady && current.connection.open) {
    status("connecting", "Finishing the last sentence…");
    await new Promise((resolve) => {
      current.stopped = resolve;
      current.connection.send({ type: "stop" });
      setTimeout(resolve, 10000);
    });
  }
  if (session === current) finish(null);
}

$("controls").addEventListener("submit", (event) => {
  event.preventDefault();
  start();
});
$("stop").addEventListener("click", stop);
$("language").addEventListener("change", () => {
  const chosen = $("language").value;
  prefs.set("speak.language", chosen);
  // A reload (or a shared link) keeps the choice rather than the ?language= the page came with.
  if (params.has("language")) {
    const url = new URL(location.href);
    if (chosen) url.searchParams.set("language", chosen);
    else url.searchParams.delete("language");
    history.replaceState(null, "", url);
  }
});
$("translate").addEventListener("change", () => prefs.set("speak.translate", $("translate").checked ? "en" : ""));

if (navigator.mediaDevices) {
  listMicrophones();
  navigator.mediaDevices.addEventListener("devicechange", listMicrophones);
} else {
  $("start").disabled = true;
  say("The microphone is only available over HTTPS (or on localhost). " +
    "Serve livecap with --tls-cert and --tls-key, or open this page on the server's own machine.");
}
