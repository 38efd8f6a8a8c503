// /dashboard[?token=OPERATOR_KEY][&theme=dark|light]: every open room, live.
// Polls GET /operator/rooms each second (see livecap/operator.py for the
// fields); "End room" posts to /operator/rooms/ROOM/end. Charts: uPlot,
// vendored by client/vendor/update.sh.
import uPlot from "/static/vendor/uplot/uPlot.esm.js";
import { Backoff, formatTime, languageName, languageOptions, params, setLanguage } from "/static/captions.js";
import { OperatorKey } from "/static/operator-key.js";

const $ = (id) => document.getElementById(id);
const root = document.documentElement;
const POLL_MS = 1000;

if (["dark", "light"].includes(params.get("theme"))) root.dataset.theme = params.get("theme");

const key = new OperatorKey({ form: $("key-form"), input: $("key"), message: $("key-message"), onKey: () => poll() });

function status(state, text) {
  $("status").dataset.state = state;
  $("status-text").textContent = text;
}

function askForKey(message) {
  clearTimeout(pollTimer);
  status("failed", "Locked");
  $("rooms").hidden = true;
  $("empty").hidden = true;
  $("server").hidden = true;
  key.ask(message);
}

let pollTimer = null;
// A server that does not answer is asked less and less often (up to every 11 s), not every second.
const backoff = new Backoff({ baseMs: POLL_MS * 2, capMs: 10 * POLL_MS });
async function poll() {
  clearTimeout(pollTimer);
  if (!key.value) {
    askForKey();
    return;
  }
  let delay = POLL_MS;
  try {
    const response = await fetch("/operator/rooms", key.authorized());
    if (response.status === 401) {
      askForKey("This key was not accepted. Paste the operator key.");
      return;
    }
    if (!response.ok) throw new Error(`HTTP ${response.status}`);
    render(await response.json());
    status("open", "Live");
    backoff.reset();
  } catch {
    status("reconnecting", "Reconnecting…");
    delay += backoff.next();
  }
  pollTimer = setTimeout(poll, delay);
}

// ---- formatting

function seconds(value) {
  if (value === null || value === undefined) return "—";
  return value < 10 ? `${value.toFixed(2)} s` : `${value.toFixed(1)} s`;
}
const STATES = { speaking: "Speaking", silent: "Silent", no_publisher: "No speaker" };

/** The room's language ({language, detected, pinned, locked, locked_after_s}): shown, and how it was chosen. */
function describeLanguage(state) {
  if (state.pinned) return [languageName(state.language), "Set by the publisher or an operator"];
  if (state.locked) {
    return [`${languageName(state.language)} · detected`,
      `Detected from the speech and kept, after ${seconds(state.locked_after_s)} of speech`];
  }
  return [state.detected ? `Detecting… (${languageName(state.detected)}?)` : "Detecting…",
    "Not settled yet: each sentence is recognised in the language detected in it"];
}

/** Set an element's text only when it changed: an alert is announced again on every change. */
function setText(element, text) {
  if (element.textContent !== text) element.textContent = text;
}

// ---- charts

function palette() {
  const css = getComputedStyle(root);
  const value = (name) => css.getPropertyValue(name).trim();
  return { fg: value("--muted"), line: value("--line"), word: value("--accent"), screen: value("--chart-2") };
}

const CHART_HEIGHT = 140;

/** Dots where a line would be too short to see: runs of one or two points
 * (a single final's word lags, the newest second). */
function shortRuns(u, seriesIndex) {
  const values = u.data[seriesIndex];
  const present = (i) => values[i] !== null && values[i] !== undefined;
  const dots = [];
  for (let i = 0; i < values.length; i++) {
    if (present(i) && !present(i - 1) && !(present(i + 1) && present(i + 2))) dots.push(i, ...(present(i + 1) ? [i + 1] : []));
  }
  return dots.length ? dots : null;
}

function chartOptions(width) {
  const colors = palette();
  const axis = {
    stroke: colors.fg,
    grid: { stroke: colors.line, width: 1 },
    ticks: { stroke: colors.line, width: 1, size: 4 },
    font: "11px system-ui, sans-serif",
  };
  const points = { show: false, size: 5, filter: shortRuns }; // no dots, except where shortRuns says
  return {
    width,
    height: CHART_HEIGHT,
    padding: [6, 14, 0, 0],
    cursor: { drag: { x: false, y: false }, points: { size: 6 } },
    legend: { show: false }, // the latency table above the chart is its legend
    // x: seconds relative to the newest point, so the axis reads "−60 s … now".
    scales: { x: { time: false, range: [-60, 0] }, y: { range: (u, min, max) => [0, Math.max(1, (max ?? 0) * 1.15)] } },
    axes: [
      { ...axis, size: 24, space: 60, incrs: [5, 10, 15, 30], values: (u, splits) => splits.map((v) => (v === 0 ? "now" : `${v} s`)) },
      { ...axis, size: 44, space: 28, values: (u, splits) => splits.map((v) => `${+v.toFixed(1)} s`) },
    ],
    series: [
      {},
      { label: "Word lag p50", stroke: colors.word, width: 2, points },
      { label: "Word lag p95", stroke: colors.word, width: 1.5, dash: [5, 4], points },
      { label: "Speech to screen p50", stroke: colors.screen, width: 2, points },
      { label: "Speech to screen p95", stroke: colors.screen, width: 1.5, dash: [5, 4], points },
    ],
  };
}

function chartData(series) {
  const newest = series.t.at(-1) ?? 0;
  return [series.t.map((t) => Math.round(t - newest)), series.word_lag_p50, series.word_lag_p95,
    series.speech_to_screen_p50, series.speech_to_screen_p95];
}

// ---- rooms

const cards = new Map(); // room name → {card, chart, data, room}

function createCard(name) {
  const card = $("room-template").content.firstElementChild.cloneNode(true);
  card.dataset.room = name;
  const field = (selector) => card.querySelector(selector);
  field(".name").textContent = name;
  field(".name").title = `${name}: open the phone view`;
  field(".end").addEventListener("click", () => confirmEnd(name));
  field(".settings").addEventListener("click", () => openSettings(name));
  const plot = field(".plot");
  const entry = { card, field, plot, chart: null, data: null };
  new ResizeObserver(() => {
    if (entry.chart && plot.clientWidth) entry.chart.setSize({ width: plot.clientWidth, height: CHART_HEIGHT });
  }).observe(plot);
  return entry;
}

function drawChart(entry) {
  entry.chart?.destroy();
  entry.chart = new uPlot(chartOptions(entry.plot.clientWidth || 360), entry.data, entry.plot);
}

function updateCard(entry, room) {
  const { card, field } = entry;
  entry.room = room;
  card.dataset.state = room.state;
  field(".name").href = room.links.view;
  field(".state-text").textContent = STATES[room.state] ?? room.state;
  const engine = field(".engine");
  engine.textContent = room.engine ?? "—";
  engine.title = room.model_version ? `model ${room.model_version}` : "";
  engine.dataset.fallback = room.on_fallback;
  field(".viewers").textContent = room.viewers;
  // Newer fields, shown when the server sends them.
  field(".language-stat").hidden = !room.language;
  if (room.language) {
    const language = field(".language");
    const [text, title] = describeLanguage(room.language);
    const translated = room.translate ? ` → ${languageName(room.translate)}` : "";
    language.textContent = `${text}${translated}`;
    language.title = translated ? `${title}; translated into ${languageName(room.translate)}` : title;
  }
  field(".node-stat").hidden = !room.node;
  field(".node").textContent = room.node ?? "";
  card.dataset.degraded = Boolean(room.degraded);
  field(".degraded").hidden = !room.degraded;
  setText(field(".degraded"), room.degraded ? `⚠ ${room.degraded}` : "");
  field(".fallback").textContent = room.fallback_share === null ? "—" : `${Math.round(room.fallback_share * 100)} %`;
  field(".fallback").dataset.level = room.fallback_share > 0.5 ? "bad" : room.fallback_share > 0 ? "warn" : "";
  for (const [row, kind] of [[".word-lag", "word_lag"], [".screen", "speech_to_screen"], [".final-lag", "final_lag"]]) {
    field(`${row} .p50`).textContent = seconds(room.latency[kind].p50);
    field(`${row} .p95`).textContent = seconds(room.latency[kind].p95);
  }
  field(".qr").href = room.links.qr;
  field(".overlay").href = room.links.overlay;
  field(".transcript").href = room.links.transcript;
  field(".edit").href = `${room.links.edit}?${new URLSearchParams({ token: key.value })}`;
  const { quality } = room;
  field(".quality").textContent = `${quality.corrections} corrected · ${quality.flags} flagged · ` +
    (quality.rating === null ? "no rating" : `★ ${quality.rating.toFixed(1)} (${quality.ratings})`);
  const { glossary } = quality;
  field(".glossary").textContent = glossary.terms ? `${glossary.terms} terms · ${glossary.heard} recognised` +
    (glossary.most_heard.length ? ": " + glossary.most_heard.map((t) => `${t.term} ×${t.count}`).join(", ") : "")
    : "none";
  const outputs = room.outputs ?? [];
  field(".outputs").hidden = !outputs.length;
  field(".output-list").replaceChildren(...outputs.map(describeOutput));
  field(".flagged").hidden = !quality.flagged.length;
  field(".flagged-lines").replaceChildren(...quality.flagged.map((line) => {
    const item = document.createElement("li");
    item.dataset.seq = line.seq;
    item.textContent = `${line.text} `;
    const count = document.createElement("span");
    count.className = "count";
    count.textContent = `⚑ ${line.flags}`;
    item.append(count);
    return item;
  }));

  const items = room.recent.map((final) => {
    const item = document.createElement("li");
    const time = document.createElement("time");
    const text = document.createElement("span");
    time.textContent = formatTime(final.start);
    text.textContent = final.text;
    setLanguage(text, final.language);
    item.append(time, " ", text);
    return item;
  });
  if (room.partial) {
    const item = document.createElement("li");
    item.className = "partial";
    item.textContent = room.partial;
    setLanguage(item, room.language?.language ?? room.language?.detected);
    items.push(item);
  }
  if (!items.length) {
    const item = document.createElement("li");
    item.className = "none";
    item.textContent = "No captions yet";
    items.push(item);
  }
  field(".recent").replaceChildren(...items);

  entry.data = chartData(room.series);
  if (!entry.chart) drawChart(entry);
  else entry.chart.setData(entry.data);
}

const OUTPUT_KINDS = { obs: "OBS", youtube: "YouTube", zoom: "Zoom", webhook: "Webhook" };
const OUTPUT_STATES = { idle: "waiting for captions", sending: "sending the first line", ok: "ok",
                        retrying: "retrying", failing: "failing" };

/** One output on a room card: its health, what it delivered, and what went wrong last. */
function describeOutput(output) {
  const item = document.createElement("li");
  item.className = "output-state";
  item.dataset.state = output.enabled ? output.state : "off";
  const name = document.createElement("strong");
  name.textContent = output.name;
  const state = document.createElement("span");
  state.className = "badge";
  state.textContent = output.enabled ? OUTPUT_STATES[output.state] ?? output.state : "off";
  const figures = document.createElement("span");
  figures.className = "figures";
  figures.textContent = `${OUTPUT_KINDS[output.kind] ?? output.kind} · ${output.sent} sent · ${output.queued} waiting` +
    (output.failures ? ` · ${output.failures} failed attempts` : "") + (output.dropped ? ` · ${output.dropped} lost` : "");
  item.append(name, " ", state, " ", figures);
  if (output.last_error && output.state !== "ok") {
    const error = document.createElement("span");
    error.className = "error";
    error.textContent = output.last_error;
    item.append(" ", error);
  }
  return item;
}

function render(snapshot) {
  $("key-form").hidden = true;
  $("rooms").hidden = false;
  const { server } = snapshot;
  $("server").hidden = false;
  $("server").dataset.status = server.status;
  $("server-engine").textContent = `Engine ${server.engine}${server.fallback ? ` · fallback ${server.fallback}` : ""}` +
    ` · step budget ${seconds(server.latency_budget_s)}${server.status === "ready" ? "" : ` · ${server.status}`}`;
  const count = (n, one, many) => `${n} ${n === 1 ? one : many}`;
  $("server-totals").textContent = `${count(snapshot.rooms.length, "room", "rooms")} · ` +
    `${count(server.publishers, "speaker", "speakers")} · ${count(server.viewers, "viewer", "viewers")}`;
  const { cluster } = snapshot;
  $("server-cluster").hidden = !cluster;
  if (cluster) {
    const nodes = cluster.nodes.length;
    $("server-cluster").textContent = `· node ${cluster.node} of ${count(Math.max(nodes, 1), "node", "nodes")} · ` +
      (cluster.redis === "reachable" ? "Redis reachable"
        : `⚠ Redis unreachable (${cluster.error}); ${count(cluster.pending_writes, "event", "events")} to write`);
    if (cluster.redis !== "reachable") $("server").dataset.status = "degraded";
  }
  $("empty").hidden = snapshot.rooms.length > 0;
  $("models").hidden = !snapshot.models.length;
  $("models").tBodies[0].replaceChildren(...snapshot.models.map((model) => {
    const row = document.createElement("tr");
    for (const value of [model.model_version, model.lines, model.corrected, model.flags_per_100_lines ?? "—",
      model.rating === null ? "—" : `★ ${model.rating.toFixed(1)}`]) {
      const cell = document.createElement("td");
      cell.textContent = value;
      row.append(cell);
    }
    return row;
  }));

  const seen = new Set();
  let previous = null;
  for (const room of snapshot.rooms) {
    seen.add(room.name);
    let entry = cards.get(room.name);
    if (!entry) {
      entry = createCard(room.name);
      cards.set(room.name, entry);
    }
    // Keep the server's order (speaking rooms first) without re-inserting cards that are in place.
    const expected = previous ? previous.nextElementSibling : $("rooms").firstElementChild;
    if (expected !== entry.card) $("rooms").insertBefore(entry.card, expected);
    updateCard(entry, room);
    previous = entry.card;
  }
  for (const [name, entry] of cards) {
    if (!seen.has(name)) {
      entry.chart?.destroy();
      entry.card.remove();
      cards.delete(name);
    }
  }
}

// A change of theme (the system's, or data-theme) re-colours the charts.
const redraw = () => {
  for (const entry of cards.values()) if (entry.data) drawChart(entry);
};
matchMedia("(prefers-color-scheme: dark)").addEventListener("change", redraw);
new MutationObserver(redraw).observe(root, { attributes: true, attributeFilter: ["data-theme"] });

// ---- actions

function confirmEnd(name) {
  const entry = cards.get(name);
  const viewers = entry?.room?.viewers ?? 0;
  const audience = viewers === 1 ? "the 1 viewer" : `all ${viewers} viewers`;
  $("end-room").textContent = name;
  $("end-detail").textContent = (entry?.room?.state === "no_publisher"
    ? `${audience[0].toUpperCase()}${audience.slice(1)} ${viewers === 1 ? "is" : "are"} disconnected. `
    : `The speaker's last sentence is finished, then the speaker and ${audience} are disconnected. `) +
    "The transcript is kept and the room can be started again.";
  const dialog = $("end-dialog");
  dialog.returnValue = "";
  dialog.onclose = () => {
    if (dialog.returnValue === "end") endRoom(name);
  };
  dialog.showModal();
}

async function endRoom(name) {
  $("notice").hidden = true;
  try {
    const response = await fetch(`/operator/rooms/${encodeURIComponent(name)}/end`, key.authorized({ method: "POST" }));
    if (response.status === 401) return askForKey("This key was not accepted. Paste the operator key.");
    if (!response.ok && response.status !== 404) throw new Error(await response.text());
  } catch (error) {
    $("notice").hidden = false;
    $("notice").textContent = `Room “${name}” could not be ended: ${error.message}`;
  }
  poll();
}

// ---- room settings

const terms = (text) => text.split(/[,\n]/).map((t) => t.trim()).filter(Boolean);
const settingsUrl = (name) => `/operator/rooms/${encodeURIComponent(name)}/settings`;
/** The room's language settings as the dialog read them ({language, translate, candidates}); null: the server has none. */
let readLanguages = null;

$("settings-language").append(...languageOptions());
const showCandidates = () => {
  $("settings-language-candidates-field").hidden = $("settings-language").value !== "auto";
};
$("settings-language").addEventListener("change", showCandidates);

/** The language settings the operator changed. Only those are sent: the same language sent again
 * would make an auto room detect anew, and a new one may first load the multilingual model. */
function languageChanges() {
  if (!readLanguages) return {};
  const language = $("settings-language").value;
  const chosen = {
    language,
    translate: $("settings-translate").checked ? "en" : null,
    candidates: language === "auto"
      ? terms($("settings-language-candidates").value).map((code) => code.toLowerCase()) : readLanguages.candidates,
  };
  return Object.fromEntries(Object.entries(chosen)
    .filter(([name, value]) => JSON.stringify(value) !== JSON.stringify(readLanguages[name])));
}

const OUTPUT_ADDRESSES = {
  obs: "ws://127.0.0.1:4455 (OBS: Tools → WebSocket Server Settings)",
  youtube: "https://upload.youtube.com/closedcaption?cid=… (YouTube Studio: the stream's caption ingestion URL)",
  zoom: "https://wmcc.zoom.us/closedcaption?id=… (Zoom: Captions → API token)",
  webhook: "https://… (receives each line as JSON)",
};
const SECRETS = { obs: "obs-websocket password", webhook: "signing secret (optional)" };

/** A row of the outputs editor, filled from an output as the server shows it (or a new one). */
function outputRow(output = {}) {
  const row = $("output-template").content.firstElementChild.cloneNode(true);
  const get = (selector) => row.querySelector(selector);
  const showKind = () => {
    row.dataset.kind = get(".kind").value;
    row.dataset.mode = get(".mode").value;
    get(".url").placeholder = OUTPUT_ADDRESSES[row.dataset.kind];
    get(".secret").hidden = !(row.dataset.kind in SECRETS);
    get(".secret").placeholder = row.dataset.secretKept ? "(kept; type to replace)" : SECRETS[row.dataset.kind] ?? "";
  };
  get(".kind").value = output.kind ?? "obs";
  get(".name").value = output.name ?? `${get(".kind").value}-${$("settings-outputs").children.length + 1}`;
  get(".url").value = output.url ?? "";
  if (output.secret) row.dataset.secretKept = "yes";
  get(".enabled").checked = output.enabled ?? true;
  get(".track").value = output.track ?? "original";
  get(".offset").value = output.offset_s ?? 0;
  get(".lang").value = output.lang ?? "";
  get(".mode").value = output.mode ?? "captions";
  get(".source").value = output.source ?? "Captions";
  get(".lines").value = output.lines ?? 2;
  get(".partials").checked = output.partials ?? false;
  get(".kind").addEventListener("change", showKind);
  get(".mode").addEventListener("change", showKind);
  get(".remove").addEventListener("click", () => row.remove());
  showKind();
  return row;
}

/** The outputs as the dialog read them (JSON, as readOutputs gives them): sent back only when changed,
 * so that saving other settings never overwrites another operator's outputs. */
let readOutputsJson = null;

/** The outputs as the editor holds them; a secret left empty keeps the one the server has. */
function readOutputs() {
  return [...$("settings-outputs").children].map((row) => {
    const get = (selector) => row.querySelector(selector);
    const kind = get(".kind").value;
    const secret = get(".secret").value || (row.dataset.secretKept ? "(kept)" : null);
    const output = { name: get(".name").value.trim(), kind, url: get(".url").value.trim(),
                     enabled: get(".enabled").checked, track: get(".track").value };
    if (kind in SECRETS) output.secret = secret;
    if (kind === "youtube") output.offset_s = Number(get(".offset").value) || 0;
    if (kind === "zoom") output.lang = get(".lang").value.trim() || null;
    if (kind === "obs") {
      Object.assign(output, { mode: get(".mode").value, source: get(".source").value.trim() || "Captions",
                              lines: Number(get(".lines").value) || 2, partials: get(".partials").checked });
    }
    return output;
  });
}

$("settings-add-output").addEventListener("click", () => {
  const row = outputRow();
  $("settings-outputs").append(row);
  row.querySelector(".url").focus();
});

async function openSettings(name) {
  const dialog = $("settings-dialog");
  const response = await fetch(settingsUrl(name), key.authorized()).catch(() => null);
  if (response?.status === 401) return askForKey("This key was not accepted. Paste the operator key.");
  if (!response?.ok) {
    $("notice").hidden = false;
    $("notice").textContent = `The settings of “${name}” could not be read.`;
    return;
  }
  const { settings, effective, audit } = await response.json();
  $("settings-room").textContent = name;
  $("settings-server-glossary").checked = settings.glossary === null;
  $("settings-glossary").value = effective.glossary.join("\n");
  $("settings-glossary").disabled = settings.glossary === null;
  $("settings-profanity").value = settings.profanity.join("\n");
  $("settings-viewer-keys").value = String(settings.viewer_keys);
  $("settings-recording").checked = settings.recording;
  // Newer fields, edited when the server has them.
  readLanguages = "language" in settings
    ? { language: settings.language, translate: settings.translate, candidates: settings.candidates } : null;
  $("settings-languages").hidden = !readLanguages;
  if (readLanguages) {
    $("settings-language").value = settings.language;
    $("settings-translate").checked = settings.translate === "en";
    $("settings-language-candidates").value = settings.candidates.join(", ");
    showCandidates();
  }
  $("settings-outputs-field").hidden = !("outputs" in settings);
  $("settings-outputs").replaceChildren(...(settings.outputs ?? []).map(outputRow));
  readOutputsJson = JSON.stringify(readOutputs());
  $("settings-save").disabled = false;
  $("settings-message").hidden = true;
  $("settings-candidates").replaceChildren();
  $("settings-accept").hidden = true;
  $("settings-audit").replaceChildren(...audit.reverse().map((entry) => {
    const item = document.createElement("li");
    const changes = Object.entries(entry.changes).map(([field, [old, now]]) => `${field}: ${JSON.stringify(old)} → ${JSON.stringify(now)}`);
    item.textContent = `${new Date(entry.time * 1000).toLocaleString()} · ${entry.who} · ${changes.join("; ")}`;
    return item;
  }));
  dialog.dataset.room = name;
  dialog.showModal();
}

$("settings-server-glossary").addEventListener("change", (event) => {
  $("settings-glossary").disabled = event.target.checked;
});

// Proposed terms: ticked ones join the glossary box, where the operator edits them before saving.
$("settings-propose-button").addEventListener("click", async () => {
  const name = $("settings-dialog").dataset.room;
  const response = await fetch(`/operator/rooms/${encodeURIComponent(name)}/glossary/candidates`, key.authorized({
    method: "POST", headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ text: $("settings-source").value }),
  })).catch(() => null);
  const answer = await response?.json().catch(() => ({}));
  if (!response?.ok) {
    $("settings-message").hidden = false;
    $("settings-message").textContent = `No terms proposed: ${answer?.message ?? "the server cannot be reached"}`;
    return;
  }
  const listed = new Set(terms($("settings-glossary").value).map((t) => t.toLowerCase()));
  const fresh = answer.candidates.filter((c) => !listed.has(c.term.toLowerCase()));
  $("settings-candidates").replaceChildren(...fresh.map((candidate) => {
    const item = document.createElement("li");
    const label = document.createElement("label");
    const box = document.createElement("input");
    box.type = "checkbox";
    box.value = candidate.term;
    box.checked = candidate.why !== "rare";
    label.append(box, ` ${candidate.term} `);
    const why = document.createElement("span");
    why.className = "why";
    why.textContent = `${candidate.why} · ×${candidate.count}`;
    label.append(why);
    item.append(label);
    return item;
  }));
  $("settings-accept").hidden = !fresh.length;
  if (!fresh.length) $("settings-candidates").textContent = "No new terms found.";
});

$("settings-accept").addEventListener("click", () => {
  const ticked = [...$("settings-candidates").querySelectorAll("input:checked")].map((box) => box.value);
  const box = $("settings-glossary");
  if ($("settings-server-glossary").checked) {
    $("settings-server-glossary").checked = false;
    box.disabled = false;
  }
  box.value = [...terms(box.value), ...ticked].join("\n");
  $("settings-candidates").replaceChildren();
  $("settings-accept").hidden = true;
});

$("settings-form").addEventListener("submit", async (event) => {
  if (event.submitter?.value !== "save") return;
  event.preventDefault();
  const dialog = $("settings-dialog");
  const body = {
    glossary: $("settings-server-glossary").checked ? null : terms($("settings-glossary").value),
    profanity: terms($("settings-profanity").value),
    viewer_keys: JSON.parse($("settings-viewer-keys").value),
    recording: $("settings-recording").checked,
    ...languageChanges(),
  };
  const outputs = readOutputs();
  if (!$("settings-outputs-field").hidden && JSON.stringify(outputs) !== readOutputsJson) body.outputs = outputs;
  // A new language may take the server a few seconds (the multilingual model loads first).
  $("settings-save").disabled = true;
  const response = await fetch(settingsUrl(dialog.dataset.room), key.authorized({
    method: "PATCH", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
  })).catch(() => null);
  $("settings-save").disabled = false;
  if (response?.ok) {
    dialog.close();
    poll();
    return;
  }
  const answer = await response?.json().catch(() => ({}));
  $("settings-message").hidden = false;
  $("settings-message").textContent = `Not saved: ${answer?.message ?? "the server cannot be reached"}`;
});

poll();
