// /edit/ROOM[?token=OPERATOR_KEY][&lowconf=0.5]: the live caption editor.
// Every line of the room as it grows (the caption socket from seq 0);
// keyboard first: ↑/↓ choose a line, Enter edits it, Enter saves, Esc
// cancels (a click edits too). Saving posts {"seq", "text"} to
// /operator/rooms/ROOM/corrections, naming the version of the line this
// editor saw: if another editor corrected it first, the server refuses
// (409 edit_conflict) and the line shows their text, with ours kept in the
// box to save again. Words of finals below `lowconf` are marked.
import { followCaptions, formatTime, numberParam, room, setLanguage, wordNodes } from "/static/captions.js";
import { OperatorKey } from "/static/operator-key.js";

const $ = (id) => document.getElementById(id);
const lowConfidence = numberParam("lowconf", 0.5, 0, 1);
const key = new OperatorKey({ form: $("key-form"), input: $("key"), message: $("key-message"), onKey: () => start() });

document.title = `${room} · Caption editor`;
$("room").textContent = room;

/** segment → {item, text and note (its elements), seq and event (the version shown)} */
const lines = new Map();
let selected = null; // a line
let editing = null; // {line, input, base and original: the seq and text of the version being edited}

function render(line) {
  const { text, event } = line;
  line.item.dataset.seq = line.seq;
  line.item.classList.toggle("corrected", event.kind === "correction");
  setLanguage(text, event.language);
  text.replaceChildren(...wordNodes(event, lowConfidence, "mark")); // a correction has no words: its text
}

function apply(event) {
  if (event.kind === "partial") {
    $("live").textContent = event.text;
    setLanguage($("live"), event.language);
    return;
  }
  let line = lines.get(event.segment);
  if (event.kind === "final") {
    $("live").textContent = "";
    if (!event.text) return;
    if (!line) line = addLine(event);
  } else if (!line) {
    return; // a correction of a line this page never showed
  }
  if (event.seq < (line.seq ?? 0)) return; // an older version (the POST answer after the socket's event)
  Object.assign(line, { seq: event.seq, event });
  if (editing?.line !== line) render(line);
  else if (event.seq !== editing.base && !editing.saving) line.note.textContent = `Another editor changed this line to “${event.text}”.`;
  $("empty").hidden = true;
}

function addLine(event) {
  const item = document.createElement("li");
  const time = document.createElement("time");
  const text = document.createElement("span");
  const note = document.createElement("span");
  item.className = "item line";
  item.setAttribute("role", "option");
  item.id = `line-${event.segment}`;
  time.textContent = formatTime(event.start);
  text.className = "text";
  note.className = "note";
  item.append(time, text, note);
  const line = { item, text, note, seq: null, event };
  item.addEventListener("click", (event) => {
    if (editing?.line === line || event.target.closest("button")) return; // the note's buttons are not the line
    select(line);
    edit(line);
  });
  lines.set(event.segment, line);
  const list = $("lines");
  const follow = !selected && scrollY + innerHeight >= document.documentElement.scrollHeight - 48;
  list.append(item);
  if (follow) item.scrollIntoView({ block: "nearest" });
  return line;
}

function select(line) {
  if (!line) return;
  selected?.item.setAttribute("aria-selected", "false");
  selected = line;
  line.item.setAttribute("aria-selected", "true");
  $("lines").setAttribute("aria-activedescendant", line.item.id);
  line.item.scrollIntoView({ block: "nearest" });
}

function edit(line, text = line.event.text) {
  cancel();
  const input = document.createElement("input");
  input.className = "editor";
  input.value = text;
  input.setAttribute("aria-label", "Corrected text");
  line.text.replaceChildren(input);
  line.note.textContent = "";
  editing = { line, input, base: line.seq, original: line.event.text };
  input.focus();
  input.addEventListener("keydown", (e) => {
    if (e.key === "Enter") {
      e.preventDefault();
      save(editing, input.value);
    } else if (e.key === "Escape") {
      e.preventDefault();
      cancel();
    }
    e.stopPropagation();
  });
}

function cancel() {
  if (!editing) return;
  const { line } = editing;
  editing = null;
  render(line);
  $("lines").focus();
}

async function save(edited, text) {
  const { line, base } = edited;
  if (text.trim() === line.event.text && base === line.seq) {
    cancel();
    return;
  }
  line.note.textContent = "Saving…";
  edited.saving = true;
  let response;
  try {
    response = await fetch(`/operator/rooms/${encodeURIComponent(room)}/corrections`, key.authorized({
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ seq: base, text }),
    }));
  } catch {
    edited.saving = false;
    line.note.textContent = "Not saved: the server cannot be reached. Enter tries again.";
    return;
  }
  edited.saving = false;
  if (response.status === 401) {
    askForKey("This key was not accepted. Paste the operator key.");
    return;
  }
  const answer = await response.json().catch(() => ({}));
  if (editing !== edited) return; // cancelled meanwhile
  if (response.ok) {
    editing = null;
    apply(answer);
    render(line);
    line.note.replaceChildren("Saved", ...newTerms(edited.original, answer.text).map((term) => teachButton(line, term)));
    $("lines").focus();
  } else if (answer.code === "edit_conflict") {
    // Another editor was first: say what they saved, keep ours in the box to save over it knowingly.
    edited.base = answer.current.seq;
    line.note.textContent = `Another editor changed this line to “${answer.current.text}”. Enter saves yours over it.`;
  } else {
    line.note.textContent = `Not saved: ${answer.message ?? `HTTP ${response.status}`}`;
  }
}

const wordKey = (word) => word.toLowerCase().replace(/[^\p{L}\p{N}]/gu, "");

/** Runs of words of `after` that `before` did not have: what an editor taught the line (at most 3). */
function newTerms(before, after) {
  const known = new Set(before.split(/\s+/).map(wordKey));
  const runs = [];
  let run = [];
  for (const word of after.split(/\s+/)) {
    if (wordKey(word) && !known.has(wordKey(word))) run.push(word.replace(/^[^\p{L}\p{N}]+|[^\p{L}\p{N}.]+$/gu, ""));
    else if (run.length) runs.push(run.splice(0).join(" "));
  }
  if (run.length) runs.push(run.join(" "));
  return [...new Set(runs)].slice(0, 3);
}

/** One click adds `term` to the room's glossary: later captions spell it so. */
function teachButton(line, term) {
  const button = document.createElement("button");
  button.type = "button";
  button.className = "teach";
  button.textContent = `Add “${term}” to the glossary`;
  button.addEventListener("click", async () => {
    button.disabled = true;
    const response = await fetch(`/operator/rooms/${encodeURIComponent(room)}/glossary`, key.authorized({
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ terms: [term] }),
    })).catch(() => null);
    const answer = await response?.json().catch(() => ({}));
    button.replaceWith(response?.ok ? `“${term}” is in the room's glossary` : `Not added: ${answer?.message ?? "the server cannot be reached"}`);
  });
  return button;
}

function move(step) {
  const items = [...lines.values()];
  if (!items.length) return;
  const at = selected ? items.indexOf(selected) : step > 0 ? -1 : items.length;
  select(items[Math.max(0, Math.min(items.length - 1, at + step))]);
}

document.addEventListener("keydown", (e) => {
  if (editing || !$("key-form").hidden) return;
  if (e.key === "ArrowDown" || e.key === "ArrowUp") {
    e.preventDefault();
    move(e.key === "ArrowDown" ? 1 : -1);
  } else if (e.key === "Enter" && selected) {
    e.preventDefault();
    edit(selected);
  }
});

const STATES = { connecting: "Connecting…", open: "Live", reconnecting: "Reconnecting…", closed: "Closed" };
let connection = null;

function start() {
  connection?.close();
  connection = followCaptions({
    fromStart: true,
    token: key.value,
    onCaption: apply,
    onState(state, error) {
      $("status").dataset.state = state;
      $("status-text").textContent = state === "failed" ? "Not connected" : STATES[state];
      $("notice").hidden = state !== "failed";
      $("notice").textContent = state === "failed" ? `Captions unavailable: ${error?.message ?? "refused"}.` : "";
    },
  });
}

function askForKey(message) {
  connection?.close();
  key.ask(message);
}

if (key.value) start();
else askForKey();
