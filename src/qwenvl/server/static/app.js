// qwenvl playground: plain JavaScript, no dependencies. Talks to the server's own endpoints:
// /v1/models, /compatible-mode/v1/chat/completions (streamed), /qwenvl/v1/{estimate,ground,ocr,extract}.
"use strict";

const STORE = "qwenvl-playground";   // the conversation (localStorage: survives a reload)
const KEY = "qwenvl-key";            // the server's API key (sessionStorage: this tab only)
const $ = (id) => document.getElementById(id);
const state = { messages: [], attachments: [], controller: null, stopping: false, paged: false };

// ---- persistence -------------------------------------------------------------------------------------
function save() {
  const data = { model: $("model").value, messages: state.messages };
  try {
    localStorage.setItem(STORE, JSON.stringify(data));
  } catch (e) {  // over the quota: keep the text, drop the pictures
    const light = state.messages.map((m) => ({ ...m, parts: (m.parts || []).filter((p) => p.type === "text"),
      pages: m.pages && m.pages.map(({ picture, ...rest }) => rest) }));  // a PDF page's rendered picture too
    try { localStorage.setItem(STORE, JSON.stringify({ ...data, messages: light })); } catch (_) { /* full */ }
  }
}
function load() {
  try { return JSON.parse(localStorage.getItem(STORE) || "{}"); } catch (_) { return {}; }
}

// ---- talking to the server ---------------------------------------------------------------------------
function headers() {
  const h = { "Content-Type": "application/json" };
  const key = sessionStorage.getItem(KEY);
  if (key) h.Authorization = "Bearer " + key;
  return h;
}
function askKey() {
  return new Promise((resolve) => {
    const dlg = $("keydialog");
    $("keyinput").value = "";
    dlg.addEventListener("close", () => {
      const v = $("keyinput").value.trim();
      if (v) sessionStorage.setItem(KEY, v);
      if (v && !$("model").options.length) loadModels(load().model);  // the list failed with the old key
      resolve(Boolean(v));
    }, { once: true });
    dlg.showModal();
  });
}
async function errorLine(resp) {
  let text = "";
  try { text = await resp.text(); } catch (_) { /* gone */ }
  try {
    const body = JSON.parse(text);
    const err = body.error || body;
    if (err.message) return err.message + (err.code ? ` (${err.code})` : "");
  } catch (_) { /* not JSON */ }
  return `HTTP ${resp.status} ${resp.statusText || ""}`.trim();
}
// fetch with the key; on 401 ask for the key once and try again
async function call(path, init = {}, retried = false) {
  const resp = await fetch(path, { ...init, headers: { ...headers(), ...(init.headers || {}) } });
  if (resp.status === 401 && !retried && await askKey()) return call(path, init, true);
  if (!resp.ok) throw new Error(await errorLine(resp));
  return resp;
}
async function post(path, body, signal) {
  return (await call(path, { method: "POST", body: JSON.stringify(body), signal })).json();
}
function showError(message) {
  const el = $("error");
  el.textContent = message ? "Error: " + String(message).split("\n")[0] : "";
  el.hidden = !message;
}

// ---- options -----------------------------------------------------------------------------------------
function mode() { return document.querySelector("input[name=mode]:checked").value; }
// the modes that read a PDF page by page (one request a page, as `qwenvl ocr` and `qwenvl ground` do)
function pagedMode() { return mode() === "ocr" || mode() === "find"; }
// the image settings as a request's fields: Detail low applies where the server prepares the image (Find, OCR,
// Extract, the estimate); an answer (Ask) sends the images as chat completions do, where only High resolution applies
function options() {
  const o = { model: $("model").value };
  const detail = $("detail").value;
  if (detail !== "auto" && mode() !== "ask") o.detail = detail;
  if ($("highres").checked || detail === "high") o.vl_high_resolution_images = true;
  return o;
}
// why a setting does not apply in the mode chosen (null: it applies); the control is disabled and the reason shown
function notApplying(id) {
  if (id === "thinking" && mode() === "extract") {
    return "Thinking does not apply to Extract: its answer is JSON, which Qwen-VL models give only in non-thinking mode.";
  }
  if (id === "detail" && mode() === "ask") {
    return "Detail low does not apply to Ask: an answer sends the images at the model's default budget (High resolution applies).";
  }
  return null;
}
function settingsShown() {
  const notes = [];
  for (const id of ["thinking", "detail"]) {
    const why = notApplying(id);
    if (id === "thinking") $(id).disabled = Boolean(why);
    else $(id).querySelector("option[value=low]").disabled = Boolean(why);
    $(id).title = why || "";
    if (why) notes.push(why);
  }
  $("settings-note").textContent = notes.join(" ");
  $("settings-note").hidden = !notes.length;
}
// the answer's settings (Max tokens, Temperature, Thinking) as a request's fields, sent by every mode: each value as
// typed, 0 and off included (the server checks it by the library's rules; a refused one is the error line); left
// empty, or Thinking at the model's default: left out (the mode's default: a task's roomy max_tokens)
function generation() {
  const o = {};
  const mt = $("max_tokens").value.trim();
  if (mt !== "") o.max_tokens = Number(mt);
  const t = $("temperature").value.trim();
  if (t !== "") o.temperature = Number(t);
  const thinking = $("thinking").value;
  if (thinking && !notApplying("thinking")) o.enable_thinking = thinking === "on";
  return o;
}
// a number box holding what is not a number (the browser keeps its value empty): said, not sent as the default
function unreadable() {
  const bad = [["max_tokens", "Max tokens"], ["temperature", "Temperature"]].find(([id]) => $(id).validity.badInput);
  return bad ? `${bad[1]} is not a number: correct it in Settings, or empty it for the default.` : null;
}
// an answer stopped at max_tokens, in every mode's words: the page's own line, as Ask says it
const CUT_OFF = "Cut off at the max tokens: raise Max tokens in Settings.";

// ---- attachments and estimates -----------------------------------------------------------------------
function readAsDataURL(file) {
  return new Promise((resolve, reject) => {
    const r = new FileReader();
    r.onload = () => resolve(r.result);
    r.onerror = () => reject(r.error);
    r.readAsDataURL(file);
  });
}
function kindOf(file) {
  if (file.type.startsWith("video/")) return "video";
  if (file.type === "application/pdf") return "pdf";
  return "image";
}
async function addFiles(files) {
  showError("");
  for (const file of files) {
    if (!/^(image|video)\//.test(file.type) && file.type !== "application/pdf") {
      showError(`${file.name || "the file"} is not an image, a video or a PDF`);
      continue;
    }
    const url = await readAsDataURL(file);
    state.attachments.push({ name: file.name || "pasted image", kind: kindOf(file), url, estimate: null });
  }
  renderAttachments();
  estimate();
}
function money(cost, currency, local) {
  if (local) return "local model: no cost"; // the server's rule (qwenvl.models.LOCAL): no price, not ¥0
  if (cost === null || cost === undefined) return "cost unknown";
  const sign = currency === "USD" ? "$" : "¥";
  return sign + cost.toFixed(cost < 0.01 ? 5 : 4);
}
function describe(est) {
  if (!est) return "estimating…";
  if (est.error) return est.error;
  const sizes = est.items.map((i) => (i.width ? `${i.frames ? i.frames + " frames of " : ""}${i.width}×${i.height}` : "remote"));
  const pages = est.items.length > 1 && !est.items[0].frames ? `${est.items.length} pages, ` : "";
  return `${pages}${sizes[0] || ""} · ${est.total_tokens.toLocaleString()} tokens · ${money(est.cost, est.currency, est.local)}`;
}
function renderAttachments() {
  const ul = $("attachments");
  ul.replaceChildren();
  state.attachments.forEach((a, i) => {
    const li = document.createElement("li");
    if (a.kind === "image") {
      const img = document.createElement("img");
      img.src = a.url; img.alt = a.name;
      li.append(img);
    }
    const text = document.createElement("span");
    text.className = "est";
    text.textContent = `${a.name}: ${describe(a.estimate)}`;
    const rm = document.createElement("button");
    rm.type = "button"; rm.textContent = "×"; rm.setAttribute("aria-label", "Remove " + a.name);
    rm.onclick = () => { state.attachments.splice(i, 1); renderAttachments(); estimate(); };
    li.append(text, rm);
    ul.append(li);
  });
}
let estimateRun = 0;
async function estimate() {
  const run = ++estimateRun;
  const total = $("estimate");
  if (!state.attachments.length) { total.textContent = ""; return; }
  total.textContent = "estimating…";
  await Promise.all(state.attachments.map(async (a) => {
    const body = { ...options() };
    if (a.kind === "video") body.video = a.url; else body.images = [a.url];
    if (a.kind === "pdf" && pagedMode()) body.each_page = true;  // priced as sent: one request per page
    try { a.estimate = await post("/qwenvl/v1/estimate", body); } catch (e) { a.estimate = { error: e.message }; }
  }));
  if (run !== estimateRun) return;
  renderAttachments();
  const failed = state.attachments.filter((a) => a.estimate && a.estimate.error);
  if (failed.length) {
    total.textContent = `Cannot send ${failed.map((a) => a.name).join(", ")}: see the error next to it`;
    return;
  }
  const ok = state.attachments.map((a) => a.estimate).filter((e) => e && !e.error);
  const tokens = ok.reduce((s, e) => s + e.total_tokens, 0);
  const cost = ok.every((e) => e.cost !== null) ? ok.reduce((s, e) => s + e.cost, 0) : null;
  const local = ok.some((e) => e.local);
  const said = local ? money(null, null, true) : `about ${money(cost, ok[0] && ok[0].currency)}`;
  total.textContent = `Media: ${tokens.toLocaleString()} tokens, ${said} before sending`;
}

// ---- the conversation --------------------------------------------------------------------------------
function wireMessages() {
  return state.messages.map((m) => {
    if (m.role === "assistant") return { role: "assistant", content: m.text || "" };
    const content = m.parts.map((p) => {
      if (p.type === "text") return { type: "text", text: p.text };
      if (p.type === "video") return { type: "video_url", video_url: { url: p.url } };
      return { type: "image_url", image_url: { url: p.url } };
    });
    return { role: "user", content };
  });
}
function lastImage() {
  const a = state.attachments.find((x) => x.kind === "image" || x.kind === "pdf");
  if (a) return a.url;
  for (let i = state.messages.length - 1; i >= 0; i--) {
    const p = (state.messages[i].parts || []).find((x) => x.type === "image");
    if (p) return p.url;
  }
  return null;
}
function drawBoxes(canvas, url, result) {
  const img = new Image();
  img.onload = () => {
    canvas.width = img.naturalWidth; canvas.height = img.naturalHeight;
    const ctx = canvas.getContext("2d");
    ctx.drawImage(img, 0, 0);
    const colours = ["#ff2d55", "#34c759", "#007aff", "#ff9500", "#af52de", "#00c7be"];
    const labels = [...new Set([...(result.boxes || []), ...(result.points || [])].map((b) => b.label))];
    const lw = Math.max(2, Math.round(Math.max(img.naturalWidth, img.naturalHeight) / 300));
    ctx.font = `${Math.max(12, lw * 6)}px sans-serif`;
    ctx.textBaseline = "bottom";
    for (const b of result.boxes || []) {
      const c = colours[labels.indexOf(b.label) % colours.length];
      ctx.strokeStyle = c; ctx.lineWidth = lw;
      ctx.strokeRect(b.x1, b.y1, b.x2 - b.x1, b.y2 - b.y1);
      const w = ctx.measureText(b.label).width + 8;
      const h = Math.max(12, lw * 6) + 4;
      const y = b.y1 - h < 0 ? b.y1 + h : b.y1;
      ctx.fillStyle = c; ctx.fillRect(b.x1, y - h, w, h);
      ctx.fillStyle = "#fff"; ctx.fillText(b.label, b.x1 + 4, y - 2);
    }
    for (const p of result.points || []) {
      const c = colours[labels.indexOf(p.label) % colours.length];
      ctx.fillStyle = c; ctx.beginPath(); ctx.arc(p.x, p.y, lw * 3, 0, 2 * Math.PI); ctx.fill();
      ctx.fillText(p.label, p.x + lw * 4, p.y);
    }
    canvas.dataset.drawn = String((result.boxes || []).length + (result.points || []).length);
    scrollEnd();
  };
  img.src = url;
}
function render(m) {
  const div = document.createElement("div");
  div.className = "msg " + m.role;
  const media = (m.parts || []).filter((p) => p.type !== "text");
  if (media.length) {
    const thumbs = document.createElement("div");
    thumbs.className = "thumbs";
    for (const p of media) {
      if (p.type !== "image" || (p.kind && p.kind !== "image")) {
        const s = document.createElement("span");
        s.className = "file";
        s.textContent = `[${p.kind || p.type}: ${p.name || ""}]`;
        thumbs.append(s);
        continue;
      }
      const img = document.createElement("img"); img.src = p.url; img.alt = p.name || "image"; thumbs.append(img);
    }
    div.append(thumbs);
  }
  if (m.reasoning) {
    const d = document.createElement("details"); d.className = "reasoning";
    const s = document.createElement("summary"); s.textContent = "Reasoning";
    const t = document.createElement("div"); t.className = "reasoning-text"; t.textContent = m.reasoning;
    d.append(s, t); div.append(d);
  }
  const text = document.createElement("div");
  text.className = "text";
  text.textContent = m.role === "user" ? (m.parts.find((p) => p.type === "text") || {}).text || "" : (m.text || "");
  div.append(text);
  if (m.pages) for (const p of m.pages) div.append(renderPage(m, p));
  if (m.kind === "find" && m.result) {
    const canvas = document.createElement("canvas");
    canvas.setAttribute("aria-label", "The image with the boxes found");
    div.append(canvas);
    drawBoxes(canvas, m.image, m.result);
  }
  if ((m.kind === "extract" || m.kind === "ocr") && m.result !== undefined) {
    const pre = document.createElement("pre");
    pre.className = "result";
    pre.textContent = m.kind === "extract" ? JSON.stringify(m.result, null, 2) : m.result;
    div.append(pre);
  }
  if (m.kind === "ocr" && m.pages && m.result) div.append(resultTools(m));
  if (m.stopped_at && readingSource(m)) {
    const more = document.createElement("button");
    more.type = "button"; more.className = "continue"; more.textContent = `Continue from page ${m.stopped_at}`;
    more.onclick = () => continueReading(m);
    div.append(more);
  }
  if (m.spent) { const s = document.createElement("div"); s.className = "meta spent"; s.textContent = m.spent; div.append(s); }
  if (m.meta) { const meta = document.createElement("div"); meta.className = "meta"; meta.textContent = m.meta; div.append(meta); }
  return div;
}
// one page of a PDF read page by page: its number, then its text (OCR) or its boxes drawn on it (Find)
function renderPage(m, p) {
  const sec = document.createElement("section");
  sec.className = "page"; sec.dataset.page = String(p.page);
  const h = document.createElement("h3");
  h.textContent = m.kind === "find" ? `Page ${p.page}: ${foundLine(p)}` : `Page ${p.page}`;
  sec.append(h);
  if (m.kind === "ocr") {
    const pre = document.createElement("pre"); pre.className = "result"; pre.textContent = p.text; sec.append(pre);
  } else if (p.picture) {
    const canvas = document.createElement("canvas");
    canvas.setAttribute("aria-label", `Page ${p.page} with the boxes found`);
    sec.append(canvas);
    drawBoxes(canvas, p.picture, p);
  }
  if (notesOf(p)) {
    const w = document.createElement("div"); w.className = "meta"; w.textContent = notesOf(p); sec.append(w);
  }
  return sec;
}
// the whole reading's text, as `qwenvl ocr` writes it (each page with its break or marker): copied or downloaded
function resultTools(m) {
  const tools = document.createElement("div"); tools.className = "tools";
  const copy = document.createElement("button"); copy.type = "button"; copy.className = "copy"; copy.textContent = "Copy text";
  copy.onclick = async () => {
    try { await navigator.clipboard.writeText(m.result); copy.textContent = "Copied"; } catch (e) { showError("Cannot copy: " + e.message); }
  };
  const save = document.createElement("button"); save.type = "button"; save.className = "save"; save.textContent = "Download text";
  save.onclick = () => {
    const md = m.format === "markdown";
    const a = document.createElement("a");
    a.href = URL.createObjectURL(new Blob([m.result], { type: md ? "text/markdown" : "text/plain" }));
    a.download = md ? "qwenvl-ocr.md" : "qwenvl-ocr.txt"; a.click();
    URL.revokeObjectURL(a.href);
  };
  tools.append(copy, save);
  return tools;
}
function foundLine(r) {
  const boxes = r.boxes || [], points = r.points || [];
  if (!boxes.length && !points.length) return "Nothing found.";
  return `Found ${boxes.length} box${boxes.length === 1 ? "" : "es"}: ${[...new Set(boxes.map((b) => b.label))].join(", ")}`;
}
function scrollEnd() {
  const log = $("log");
  log.scrollTop = log.scrollHeight;
}
function renderLog() {
  const log = $("log");
  log.replaceChildren(...state.messages.map(render));
  for (const img of log.querySelectorAll("img")) if (!img.complete) img.addEventListener("load", scrollEnd, { once: true });
  scrollEnd();
}
// what the pages read so far took, summed: tokens in and out, and the cost the server priced each page at
function spentLine(pages) {
  const sum = (f) => pages.reduce((s, p) => s + ((p.usage || {})[f] || 0), 0);
  const local = pages.some((p) => p.local);
  const cost = pages.every((p) => p.cost !== null && p.cost !== undefined) ? pages.reduce((s, p) => s + p.cost, 0) : null;
  const n = pages.length;
  return `${n} page${n === 1 ? "" : "s"} read · ${sum("input_tokens").toLocaleString()} tokens in, ` +
    `${sum("output_tokens").toLocaleString()} out · ${money(cost, (pages[0] || {}).currency, local)}`;
}
// a PDF read as `qwenvl ocr` reads it: one request per page, each page shown as it arrives; the server says which
// page comes next (null after the last). Stop ends the reading after the page under way (a second Stop cuts it);
// a page that fails ends the reading and keeps the pages read, and Continue reads on from it (nothing read twice,
// nothing paid twice). `from`: the page to begin at (default the server's first). An image: one request.
async function readPages(answer, path, body, onImage, from = null) {
  let page = from;
  state.paged = true;
  answer.request = { path, body: { ...body, image: undefined } };  // to continue from a page (the file: the turn's)
  for (;;) {
    let r;
    try {
      r = await post(path, page === null ? body : { ...body, page }, state.controller.signal);
    } catch (e) {
      if (!(answer.pages || []).length) throw e;  // nothing read: the turn fails as a whole (prompt, files given back)
      answer.text = `Read ${answer.pages.length} of ${answer.page_count} pages; stopped at page ${page}.`;
      answer.meta = e.name === "AbortError" ? `Page ${page} was stopped; the pages before it are kept.`
        : `Page ${page} failed: ${e.message}`;
      answer.stopped_at = page;
      if (e.name !== "AbortError") showError(`page ${page}: ${e.message}`);
      return;
    }
    if (r.page === null || r.page === undefined) { onImage(r); return; }
    const spent = { usage: r.usage, cost: r.cost, currency: r.currency, local: r.local };
    answer.pages = answer.pages || [];
    answer.pages.push(answer.kind === "find"
      ? { page: r.page, boxes: r.boxes, points: r.points || [], picture: r.picture, warnings: r.warnings,
          truncated: r.truncated, ...spent }
      : { page: r.page, text: r.text, marked: r.marked, warnings: r.warnings, truncated: r.truncated, ...spent });
    if (answer.kind === "ocr") answer.result = answer.pages.map((p) => p.marked).join("");
    answer.page_count = r.page_count;
    answer.spent = spentLine(answer.pages);
    answer.meta = undefined; answer.stopped_at = undefined;
    answer.text = r.next === null ? `Read ${answer.pages.length} of ${r.page_count} pages.`
      : `Reading page ${r.next} of ${r.page_count}…`;
    shown(answer);
    if (r.next === null) return;
    if (state.stopping) {
      answer.text = `Stopped after page ${r.page} of ${r.page_count}.`;
      answer.stopped_at = r.next;
      return;
    }
    page = r.next;
  }
}
// the answer shown again where it is in the log
function shown(m) {
  const el = $("log").children[state.messages.indexOf(m)];
  if (el) el.replaceWith(render(m));
  scrollEnd();
}
// the PDF a reading stopped in (its turn's file), to continue from the page it stopped at; null when not kept
function readingSource(m) {
  const i = state.messages.indexOf(m);
  const part = i > 0 ? (state.messages[i - 1].parts || []).find((p) => p.kind === "pdf" && p.url) : null;
  return part && m.request ? part.url : null;
}
async function continueReading(m) {
  const url = readingSource(m);
  if (state.controller || !url || !m.stopped_at) return;
  showError("");
  busy(true);
  try {
    await readPages(m, m.request.path, { ...m.request.body, image: url }, () => {}, m.stopped_at);
  } finally {
    busy(false);
    renderLog(); save();
  }
}
// a request under way: Send off, Stop shown (and the other way round)
function busy(on) {
  state.controller = on ? new AbortController() : null;
  state.stopping = false; state.paged = false;
  $("stop").hidden = !on; $("stop").textContent = "Stop"; $("send").disabled = on;
}
function usageLine(u) {
  if (!u) return "";
  const inp = u.prompt_tokens ?? u.input_tokens, out = u.completion_tokens ?? u.output_tokens;
  return inp !== undefined ? `${inp} tokens in, ${out} out` : "";
}

// ---- sending -----------------------------------------------------------------------------------------
function applyEvent(answer, event) {
  const data = event.split("\n").filter((l) => l.startsWith("data:")).map((l) => l.slice(5).trimStart()).join("\n");
  if (!data || data === "[DONE]") return;
  const chunk = JSON.parse(data);
  if (chunk.error) throw new Error(chunk.error.message || "the stream failed");
  if (chunk.usage) answer.usage = usageLine(chunk.usage);
  for (const choice of chunk.choices || []) {
    const d = choice.delta || {};
    if (d.reasoning_content) answer.reasoning = (answer.reasoning || "") + d.reasoning_content;
    if (d.content) answer.text = (answer.text || "") + d.content;
    if (choice.finish_reason === "length") answer.cut = true;
  }
  // the usage chunk comes after the last choice's: the cut-off line is kept beside it, never replaced by it
  answer.meta = [answer.cut ? CUT_OFF : "", answer.usage || ""].filter(Boolean).join(" ") || undefined;
}
async function streamAnswer(answer, body, signal) {
  const resp = await call("/compatible-mode/v1/chat/completions", { method: "POST", body: JSON.stringify(body), signal });
  const reader = resp.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true }).replace(/\r\n/g, "\n");
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      applyEvent(answer, buffer.slice(0, cut));
      buffer = buffer.slice(cut + 2);
    }
    $("log").lastElementChild.replaceWith(render(answer));
    $("log").scrollTop = $("log").scrollHeight;
  }
}
async function send(event) {
  if (event) event.preventDefault();
  if (state.controller) return;
  showError("");
  const prompt = $("prompt").value.trim();
  const m = mode();
  const image = lastImage();  // find, OCR and extract read one image (or a PDF's pages)
  if (!prompt && m !== "ocr" && m !== "extract") { showError("Write a question first."); return; }
  if (m !== "ask" && !image) { showError("Add an image first."); return; }
  if (unreadable()) { showError(unreadable()); return; }
  let schema = null;
  if (m === "extract") {
    try { schema = JSON.parse($("schema").value || "{}"); } catch (e) { showError("The schema is not valid JSON: " + e.message); return; }
  }
  const parts = state.attachments.map((a) => ({ type: a.kind === "video" ? "video" : "image", kind: a.kind, url: a.url,
                                                name: a.name }));
  const user = { role: "user", parts: [...parts, { type: "text", text: prompt || (m === "ocr" ? "Read the text" : "Extract the data") }] };
  state.messages.push(user);
  const answer = { role: "assistant", text: "", kind: m === "ask" ? undefined : m };
  state.messages.push(answer);
  renderLog();
  $("prompt").value = "";
  const sent = state.attachments;
  state.attachments = []; renderAttachments(); estimate();
  busy(true);
  try {
    if (m === "ask") {
      const body = { model: $("model").value, stream: true, stream_options: { include_usage: true },
                     messages: wireMessages().slice(0, -1), ...options(), ...generation() };
      await streamAnswer(answer, body, state.controller.signal);
    } else if (m === "find") {
      await readPages(answer, "/qwenvl/v1/ground", { ...options(), ...generation(), image, query: prompt }, (r) => {
        answer.text = foundLine(r);
        answer.meta = notesOf(r);
        answer.result = { boxes: r.boxes, points: r.points || [] };
        answer.image = image;
      });
    } else if (m === "ocr") {
      answer.format = $("format").value;
      await readPages(answer, "/qwenvl/v1/ocr", { ...options(), ...generation(), image, format: answer.format }, (r) => {
        answer.text = "Text found:"; answer.result = r.text;
        answer.meta = notesOf(r);
      });
    } else {
      const r = await post("/qwenvl/v1/extract", { ...options(), ...generation(), image, schema },
                           state.controller.signal);
      answer.text = "Extracted:"; answer.result = r.json;
      answer.meta = notesOf(r);
    }
  } catch (e) {
    if (e.name === "AbortError") {
      answer.meta = "stopped";
    } else {
      // nothing is lost: the turn leaves the log, its prompt and files go back to the composer
      showError(e.message);
      state.messages.splice(state.messages.indexOf(user), 2);
      $("prompt").value = prompt;
      state.attachments = sent;
      renderAttachments(); estimate();
    }
  } finally {
    busy(false);
    renderLog(); save();
  }
}

// Stop: an answer is cut at once; a reading page by page (OCR, Find) ends after the page under way, which is kept
// (it is paid for); a second Stop cuts that page too
function stop() {
  if (!state.controller) return;
  if (!state.stopping && state.paged) {
    state.stopping = true;
    $("stop").textContent = "Stopping after this page (Stop again: now)";
    return;
  }
  state.controller.abort();
}

// the server's notes (each one clause, lower case, no stop) as sentences: never two run together
function sentences(notes) {
  return notes.map((n) => n.charAt(0).toUpperCase() + n.slice(1) + (/[.!?]$/.test(n) ? "" : ".")).join(" ");
}

// a task's answer's notes as sentences; when it stopped at max_tokens (the server's truncated, an extraction's
// finish_reason) they say so as Ask does, with where to raise it; undefined when there are none
function notesOf(r) {
  const notes = r.warnings || [];
  let line = notes.length ? sentences(notes) : "";
  if (r.truncated || r.finish_reason === "length") {
    line = notes.some((n) => /cut off/i.test(n)) ? `${line} Raise Max tokens in Settings.` : `${CUT_OFF} ${line}`.trim();
  }
  return line || undefined;
}

// ---- wiring ------------------------------------------------------------------------------------------
// the Model list, as the server lists it now: cleared and filled again, so a second call (the key dialog's, while
// the first call's retry is under way) never adds the names twice; the choice is kept when still listed
async function loadModels(saved) {
  const select = $("model");
  let data;
  try {
    data = (await (await call("/v1/models")).json()).data;
  } catch (e) { showError(e.message); return; }
  const keep = select.value || saved;
  select.replaceChildren(...data.map((m) => new Option(m.id, m.id)));
  if (keep && [...select.options].some((o) => o.value === keep)) select.value = keep;
}
function init() {
  const saved = load();
  settingsShown();
  state.messages = saved.messages || [];
  renderLog();
  loadModels(saved.model);
  $("composer").addEventListener("submit", send);
  $("prompt").addEventListener("keydown", (e) => { if (e.key === "Enter" && !e.shiftKey) send(e); });
  document.addEventListener("keydown", (e) => { if (e.key === "Escape" && state.controller) stop(); });
  $("stop").onclick = stop;
  $("new").onclick = () => { state.messages = []; save(); renderLog(); showError(""); };
  $("download").onclick = () => {
    const blob = new Blob([JSON.stringify({ model: $("model").value, messages: state.messages }, null, 2)], { type: "application/json" });
    const a = document.createElement("a");
    a.href = URL.createObjectURL(blob); a.download = "qwenvl-conversation.json"; a.click();
    URL.revokeObjectURL(a.href);
  };
  $("files").addEventListener("change", (e) => { addFiles([...e.target.files]); e.target.value = ""; });
  const drop = $("drop");
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => { e.preventDefault(); drop.classList.remove("over"); addFiles([...e.dataTransfer.files]); });
  drop.addEventListener("keydown", (e) => { if (e.key === "Enter" || e.key === " ") { e.preventDefault(); $("files").click(); } });
  document.addEventListener("paste", (e) => {
    const files = [...(e.clipboardData || {}).files || []];
    if (files.length) { e.preventDefault(); addFiles(files); }
  });
  for (const id of ["model", "detail", "highres"]) $(id).addEventListener("change", () => { save(); estimate(); });
  for (const r of document.querySelectorAll("input[name=mode]")) {
    r.addEventListener("change", () => {
      $("schema").hidden = mode() !== "extract"; $("formats").hidden = mode() !== "ocr";
      settingsShown();
      estimate();  // a PDF is sent whole or page by page; Detail low applies or not
    });
  }
}
init();
