// The playground: every task of the API, called from the browser with the tenant's own key.
// The key lives in this page (and in sessionStorage only when the user asks); it is sent only to this
// origin's /v1/ API as a Bearer token, never with cookies. Answers are written with textContent only:
// model output is data, never markup.
"use strict";

(() => {
  const KEY_STORAGE = "modelgate.playground.key";
  const TRACE_DEPTH = 5; // attempts followed back through escalated_from
  const META_FIELDS = ["model", "tier", "latency_ms", "cost", "cached", "escalated", "request_id", "inference_id"];
  const META_LABELS = {
    model: "model", tier: "tier", latency_ms: "latency (server)", cost: "cost", cached: "cached",
    escalated: "escalated", request_id: "request id", inference_id: "inference id", round_trip_ms: "round trip (browser)",
  };

  const $ = (selector, root = document) => root.querySelector(selector);
  const $$ = (selector, root = document) => Array.from(root.querySelectorAll(selector));

  function el(tag, attributes = {}, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attributes)) {
      if (value === null || value === undefined || value === false) continue;
      if (name === "text") node.textContent = String(value);
      else node.setAttribute(name, value === true ? "" : String(value));
    }
    for (const child of children.flat()) {
      if (child !== null && child !== undefined) node.append(child instanceof Node ? child : String(child));
    }
    return node;
  }

  // --- the key ------------------------------------------------------------------------------
  const keyInput = () => $("#api-key");

  function currentKey() {
    const key = keyInput().value.trim();
    if (!key) throw new PlaygroundError("Paste an API key first (mg_…).");
    return key;
  }

  function restoreKey() {
    const stored = sessionStorage.getItem(KEY_STORAGE);
    if (stored) {
      keyInput().value = stored;
      $("#remember-key").checked = true;
      checkKey();
    }
  }

  function rememberKey() {
    if ($("#remember-key").checked && keyInput().value.trim()) sessionStorage.setItem(KEY_STORAGE, keyInput().value.trim());
    else sessionStorage.removeItem(KEY_STORAGE);
  }

  function forgetKey() {
    sessionStorage.removeItem(KEY_STORAGE);
    keyInput().value = "";
    $("#remember-key").checked = false;
    $("#key-status").textContent = "Key forgotten.";
    $("#key-status").className = "status";
  }

  async function checkKey() {
    const status = $("#key-status");
    rememberKey();
    status.className = "status";
    status.textContent = "Checking the key…";
    try {
      const { data } = await api("/v1/me");
      const scopes = data.key.scopes.join(", ") || "none";
      status.textContent = `Tenant ${data.tenant.name} (${data.tenant.slug}), key ${data.key.prefix} “${data.key.name}” — scopes: ${scopes}`;
      status.className = "status ok";
      await loadModels();
    } catch (error) {
      status.textContent = describe(error);
      status.className = "status bad";
    }
  }

  async function loadModels() {
    const { data } = await api("/v1/models");
    for (const select of $$("select[data-models]")) fillModels(select, data.data);
    $("body").dataset.models = "loaded";
  }

  function fillModels(select, models) {
    const task = select.dataset.models;
    const chosen = select.value;
    select.replaceChildren(el("option", { value: "auto", text: "auto (routed)" }));
    for (const model of models.filter((m) => m.task === task)) {
      select.append(el("option", { value: model.id, text: `${model.id} (${model.tier})` }));
    }
    if ($$("option", select).some((option) => option.value === chosen)) select.value = chosen;
    select.dataset.all = JSON.stringify(models);
  }

  // --- the API ------------------------------------------------------------------------------
  class PlaygroundError extends Error {}

  class ApiError extends Error {
    constructor(status, body, text) {
      const error = body && body.error;
      super(error ? error.message : `HTTP ${status}: ${text.slice(0, 200)}`);
      this.status = status;
      this.code = error ? error.code : "http_error";
      this.requestId = error ? error.request_id : null;
    }
  }

  async function send(path, { method = "GET", json, form, signal } = {}) {
    const headers = { Authorization: `Bearer ${currentKey()}`, Accept: "application/json" };
    let body;
    if (json !== undefined) {
      headers["Content-Type"] = "application/json";
      body = JSON.stringify(json);
    } else if (form !== undefined) {
      body = form;
    }
    // No cookies: an operator's admin session in the same browser must not ride along.
    return fetch(path, { method, headers, body, signal, credentials: "omit", cache: "no-store", referrerPolicy: "no-referrer" });
  }

  async function api(path, options = {}) {
    const started = performance.now();
    const response = await send(path, options);
    const text = await response.text();
    const roundTrip = performance.now() - started;
    let data = null;
    try {
      data = text ? JSON.parse(text) : null;
    } catch {
      data = null;
    }
    if (!response.ok) throw new ApiError(response.status, data, text);
    return { data, headers: response.headers, roundTrip };
  }

  function describe(error) {
    if (error instanceof ApiError) {
      return `${error.status} ${error.code}: ${error.message}${error.requestId ? ` (request ${error.requestId})` : ""}`;
    }
    if (error instanceof PlaygroundError) return error.message;
    return `The request failed: ${error.message}`;
  }

  const metaFromBody = (body) => Object.fromEntries(META_FIELDS.filter((f) => f in body).map((f) => [f, body[f]]));

  function metaFromHeaders(headers) {
    const meta = {};
    for (const field of META_FIELDS) {
      const value = headers.get(`x-modelgate-${field.replace("_", "-")}`);
      if (value !== null) meta[field] = value;
    }
    return meta;
  }

  // --- showing answers ----------------------------------------------------------------------
  function resultBox(name) {
    const box = $(`[data-result="${name}"]`);
    box.replaceChildren($("#result-template").content.cloneNode(true));
    box.hidden = false;
    box.dataset.state = "running";
    $('[data-role="answer"]', box).append(el("p", { class: "status", text: "Working…" }));
    $('[data-role="trace"]', box).hidden = true;
    return box;
  }

  function showError(box, error) {
    const message = $('[data-role="error"]', box);
    message.textContent = describe(error);
    message.hidden = false;
    $('[data-role="answer"]', box).replaceChildren();
    box.dataset.state = "error";
  }

  function showAnswer(box, ...nodes) {
    $('[data-role="answer"]', box).replaceChildren(...nodes);
  }

  function formatMeta(field, value) {
    if (value === null || value === undefined || value === "") return "—";
    if (field === "latency_ms" || field === "round_trip_ms") return `${Number(value).toFixed(1)} ms`;
    if (field === "cost") return formatCost(value);
    return String(value);
  }

  // Costs come as decimal strings ("0.000000619000"): shown exactly, without the trailing zeros.
  function formatCost(value) {
    const text = String(value);
    if (!/^\d+\.\d+$/.test(text)) return text;
    return text.replace(/\.?0+$/, "") || "0";
  }

  function showMeta(box, meta) {
    const list = $('[data-role="meta"]', box);
    list.replaceChildren();
    for (const [field, value] of Object.entries(meta)) {
      list.append(el("div", { "data-field": field }, el("dt", { text: META_LABELS[field] || field }), el("dd", { text: formatMeta(field, value) })));
    }
  }

  function setMeta(box, field, value) {
    const entry = $(`[data-field="${field}"] dd`, box);
    if (entry) entry.textContent = formatMeta(field, value);
  }

  // The trace: the record of the answer and the attempts it escalated from, read back from the API.
  async function showTrace(box, inferenceId, { fillMeta = false } = {}) {
    const trace = $('[data-role="trace"]', box);
    const attempts = $('[data-role="attempts"]', box);
    trace.hidden = false;
    if (!inferenceId) {
      attempts.replaceChildren(el("li", { text: "No inference record for this answer." }));
      box.dataset.state = "done";
      return;
    }
    attempts.replaceChildren(el("li", { class: "status", text: "Reading the record…" }));
    const records = [];
    try {
      let id = inferenceId;
      while (id && records.length < TRACE_DEPTH) {
        const { data } = await api(`/v1/inferences/${encodeURIComponent(id)}`);
        records.push(data);
        id = data.escalated_from;
      }
    } catch (error) {
      const hint = error instanceof ApiError && error.code === "missing_scope" ? " (the trace needs the inferences scope)" : "";
      attempts.replaceChildren(el("li", { class: "error", text: `${describe(error)}${hint}` }));
      box.dataset.state = "done";
      return;
    }
    const answer = records[0];
    if (fillMeta) {
      setMeta(box, "latency_ms", answer.latency_ms);
      setMeta(box, "cost", answer.cost);
    }
    attempts.replaceChildren(...records.reverse().map(describeRecord));
    box.dataset.state = "done";
  }

  function describeRecord(record) {
    const facts = [
      `${record.task} · ${record.status}`,
      record.confidence === null ? null : `confidence ${Number(record.confidence).toFixed(3)}`,
      record.complexity === null ? null : `complexity ${Number(record.complexity).toFixed(2)}`,
      `${formatNumber(record.units_in)} ${record.unit} in, ${formatNumber(record.units_out)} out`,
      record.queue_ms === null ? null : `queue ${Number(record.queue_ms).toFixed(1)} ms`,
      record.compute_ms === null ? null : `compute ${Number(record.compute_ms).toFixed(1)} ms`,
      `cost ${formatCost(record.cost)}`,
      record.cached ? "cached" : null,
      record.error_code ? `error ${record.error_code}` : null,
    ].filter(Boolean);
    return el("li", { "data-model": record.model, "data-status": record.status },
      el("strong", { text: `${record.model} (${record.tier})` }), " ",
      el("span", { text: facts.join(" · ") }),
      el("div", { class: "reason", text: record.routing_reason || "" }));
  }

  const formatNumber = (value) => (value === null || value === undefined ? "?" : Number.isInteger(value) ? String(value) : Number(value).toFixed(2));

  // --- running a form -----------------------------------------------------------------------
  function lines(text) {
    return text.split("\n").map((line) => line.trim()).filter(Boolean);
  }

  function onSubmit(task, handler) {
    const form = $(`form[data-task="${task}"]`);
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      const button = $('button[type="submit"]', form);
      button.disabled = true;
      const box = resultBox(task);
      try {
        await handler(form, box);
      } catch (error) {
        showError(box, error);
      } finally {
        button.disabled = false;
      }
    });
  }

  async function answerWithTrace(box, meta, roundTrip, { fillMeta = false } = {}) {
    showMeta(box, { ...meta, round_trip_ms: roundTrip });
    offerFeedback(box, meta.request_id);
    await showTrace(box, meta.inference_id, { fillMeta });
  }

  // Good or bad: POST /v1/feedback, a quality signal the routing tuner weighs (needs the inferences scope).
  function offerFeedback(box, requestId) {
    const feedback = $('[data-role="feedback"]', box);
    if (!requestId) return;
    feedback.hidden = false;
    for (const button of $$("button[data-score]", feedback)) {
      button.addEventListener("click", async () => {
        const status = $('[data-role="feedback-status"]', feedback);
        const score = Number(button.dataset.score);
        try {
          await api("/v1/feedback", { method: "POST", json: { request_id: requestId, score } });
          status.textContent = `Recorded as ${score > 0 ? "good" : "bad"}.`;
          status.className = "status ok";
        } catch (error) {
          status.textContent = describe(error);
          status.className = "status bad";
        }
      });
    }
  }

  // --- the tasks ----------------------------------------------------------------------------
  onSubmit("detect", async (form, box) => {
    const body = { texts: lines(form.texts.value), top_k: Number(form.top_k.value) || 1, model: form.model.value };
    const { data, roundTrip } = await api("/v1/detect-language", { method: "POST", json: body });
    showAnswer(box, el("ol", { class: "items" }, data.results.map((result, i) => el("li", { "data-role": "item" },
      el("q", { text: body.texts[i] }), " → ",
      el("strong", { "data-role": "language", text: result.language }),
      ` (${Number(result.probability).toFixed(3)})`,
      result.candidates.length > 1 ? el("span", { class: "aside", text: ` also: ${result.candidates.slice(1).map((c) => `${c.language} ${Number(c.probability).toFixed(3)}`).join(", ")}` }) : null,
      el("span", { class: "aside", text: ` · ${result.model}` })))));
    await answerWithTrace(box, metaFromBody(data), roundTrip);
  });

  onSubmit("translate", async (form, box) => {
    const body = { text: form.text.value, target: form.target.value.trim(), model: form.model.value };
    if (form.source.value.trim()) body.source = form.source.value.trim();
    const { data, roundTrip } = await api("/v1/translate", { method: "POST", json: body });
    const result = data.results[0];
    showAnswer(box,
      el("p", { class: "output", "data-role": "translation", text: result.text }),
      el("p", { class: "aside", text: `${result.source}${result.source_detected ? " (detected)" : ""} → ${result.target}` +
        (result.confidence === null ? "" : ` · confidence ${result.confidence}`) + ` · ${result.model}` }));
    await answerWithTrace(box, metaFromBody(data), roundTrip);
  });

  onSubmit("classify", async (form, box) => {
    const labels = form.labels.value.split(",").map((label) => label.trim()).filter(Boolean);
    if (labels.length < 2) throw new PlaygroundError("Give at least two labels, separated by commas.");
    const body = { texts: lines(form.texts.value), labels, model: form.model.value };
    const { data, roundTrip } = await api("/v1/classify", { method: "POST", json: body });
    showAnswer(box, el("ol", { class: "items" }, data.results.map((result, i) => el("li", { "data-role": "item" },
      el("q", { text: body.texts[i] }), " → ",
      el("strong", { "data-role": "predicted", text: Array.isArray(result.predicted) ? result.predicted.join(", ") : result.predicted }),
      el("ul", { class: "scores" }, result.labels.map((score) => el("li", {},
        el("meter", { min: 0, max: 1, value: score.score }), ` ${score.label} ${Number(score.score).toFixed(3)}`))),
      el("span", { class: "aside", text: result.model })))));
    await answerWithTrace(box, metaFromBody(data), roundTrip);
  });

  onSubmit("embed", async (form, box) => {
    const texts = lines(form.texts.value);
    const { data, headers, roundTrip } = await api("/v1/embeddings", { method: "POST", json: { input: texts, model: form.model.value } });
    const vectors = data.data.map((item) => item.embedding);
    const items = vectors.map((vector, i) => el("li", { "data-role": "item" },
      el("q", { text: texts[i] }), " → ",
      el("strong", { "data-role": "dimension", text: `${vector.length} dimensions` }),
      el("code", { class: "aside", text: ` [${vector.slice(0, 6).map((x) => x.toFixed(4)).join(", ")}, …]` }),
      i === 0 ? null : el("span", { "data-role": "similarity", text: ` · cosine to the first ${cosine(vectors[0], vector).toFixed(3)}` })));
    showAnswer(box, el("ol", { class: "items" }, items), el("p", { class: "aside", text: `${data.usage.prompt_tokens} tokens` }));
    await answerWithTrace(box, metaFromHeaders(headers), roundTrip);
  });

  function cosine(a, b) {
    let dot = 0, na = 0, nb = 0;
    for (let i = 0; i < a.length; i++) {
      dot += a[i] * b[i];
      na += a[i] * a[i];
      nb += b[i] * b[i];
    }
    return dot / (Math.sqrt(na) * Math.sqrt(nb) || 1);
  }

  // --- collections --------------------------------------------------------------------------
  const collectionName = () => {
    const name = $('form[data-task="collection-create"]').elements.namedItem("name").value.trim();
    if (!name) throw new PlaygroundError("Name a collection first.");
    return encodeURIComponent(name);
  };

  function describeCollection(collection) {
    return `${collection.name}: ${collection.document_count} documents, ${collection.dimension} dimensions, ` +
      `${collection.distance}, model ${collection.model ?? "none (your vectors)"}, index ${collection.index}`;
  }

  onSubmit("collection-create", async (form, box) => {
    const { data, roundTrip } = await api("/v1/collections", { method: "POST", json: { name: form.elements.namedItem("name").value.trim(), model: form.model.value } });
    showAnswer(box, el("p", { "data-role": "collection", text: `Created ${describeCollection(data)}` }));
    showMeta(box, { round_trip_ms: roundTrip });
    box.dataset.state = "done";
  });

  $('[data-action="list-collections"]').addEventListener("click", async () => {
    const box = resultBox("collection-create");
    try {
      const { data, roundTrip } = await api("/v1/collections");
      showAnswer(box, data.length
        ? el("ul", { class: "items" }, data.map((c) => el("li", { "data-role": "collection", text: describeCollection(c) })))
        : el("p", { text: "No collections yet." }));
      showMeta(box, { round_trip_ms: roundTrip });
      box.dataset.state = "done";
    } catch (error) {
      showError(box, error);
    }
  });

  onSubmit("collection-upsert", async (form, box) => {
    const documents = lines(form.documents.value).map((line, i) => {
      const bar = line.indexOf("|");
      return bar > 0 ? { id: line.slice(0, bar).trim(), text: line.slice(bar + 1).trim() } : { id: `line-${i + 1}`, text: line };
    });
    const { data, roundTrip } = await api(`/v1/collections/${collectionName()}/documents`, { method: "POST", json: { documents } });
    showAnswer(box, el("p", { "data-role": "upserted",
      text: `${data.inserted} inserted, ${data.updated} updated, ${data.unchanged} unchanged; ${data.embedded} embedded` }));
    const inference = data.inferences[0];
    if (inference) await answerWithTrace(box, metaFromBody(inference), roundTrip);
    else {
      showMeta(box, { request_id: data.request_id, round_trip_ms: roundTrip });
      box.dataset.state = "done";
    }
  });

  onSubmit("collection-search", async (form, box) => {
    const body = { query: form.query.value, k: Number(form.k.value) || 3, hybrid: form.hybrid.checked };
    const { data, roundTrip } = await api(`/v1/collections/${collectionName()}/search`, { method: "POST", json: body });
    showAnswer(box, data.results.length
      ? el("ol", { class: "items" }, data.results.map((hit) => el("li", { "data-role": "hit", "data-id": hit.id },
        el("strong", { text: hit.id }), ` ${Number(hit.score).toFixed(3)} `, el("span", { text: hit.text }))))
      : el("p", { text: "Nothing found." }),
    el("p", { class: "aside", text: `${data.mode} search in ${Number(data.latency_ms).toFixed(1)} ms` }));
    const embedding = data.inferences.embedding;
    const meta = embedding ? metaFromBody(embedding) : { request_id: data.request_id, latency_ms: data.latency_ms };
    await answerWithTrace(box, meta, roundTrip);
  });

  // --- chat ---------------------------------------------------------------------------------
  let conversation = [];

  function transcriptLine(role, text) {
    const line = el("li", { class: role, "data-role": role }, el("span", { class: "who", text: role }), el("span", { class: "says", text }));
    $('[data-role="transcript"]').append(line);
    return $(".says", line);
  }

  $('[data-action="new-chat"]').addEventListener("click", () => {
    conversation = [];
    $('[data-role="transcript"]').replaceChildren();
    $('[data-result="chat"]').hidden = true;
  });

  onSubmit("chat", async (form, box) => {
    const message = form.message.value.trim();
    if (!message) throw new PlaygroundError("Write a message first.");
    const system = form.system.value.trim();
    const messages = [...(system ? [{ role: "system", content: system }] : []), ...conversation, { role: "user", content: message }];
    const body = { messages, model: form.model.value, max_tokens: Number(form.max_tokens.value) || 64,
                   temperature: Number(form.temperature.value), stream: form.stream.checked };
    transcriptLine("user", message);
    const reply = transcriptLine("assistant", "");
    reply.parentElement.dataset.state = "streaming";
    const stop = $('[data-action="stop-chat"]');
    const stopping = new AbortController();
    const onStop = () => stopping.abort();
    stop.addEventListener("click", onStop);
    stop.hidden = !body.stream;
    let answer;
    try {
      answer = body.stream ? await streamChat(body, reply, stopping.signal) : await completeChat(body, reply);
    } catch (error) {
      reply.parentElement.dataset.state = "error";
      if (!reply.textContent) reply.textContent = "(no answer)";
      throw error;
    } finally {
      stop.hidden = true;
      stop.removeEventListener("click", onStop);
    }
    const { text, meta, roundTrip, stopped } = answer;
    reply.parentElement.dataset.state = stopped ? "stopped" : "done";
    conversation.push({ role: "user", content: message }, { role: "assistant", content: text });
    form.message.value = "";
    showAnswer(box, el("p", { class: "aside", "data-role": "how",
      text: stopped ? "Stopped: the connection was closed, which tells the server to stop generating."
        : body.stream ? "Streamed with server-sent events." : "One JSON answer." }));
    // A stream's headers leave before its cost is known: latency and cost come from the finished record.
    await answerWithTrace(box, meta, roundTrip, { fillMeta: body.stream });
  });

  async function completeChat(body, reply) {
    const { data, headers, roundTrip } = await api("/v1/chat/completions", { method: "POST", json: body });
    const text = data.choices[0].message.content;
    reply.textContent = text;
    return { text, meta: metaFromHeaders(headers), roundTrip };
  }

  async function streamChat(body, reply, signal) {
    const started = performance.now();
    let response;
    try {
      response = await send("/v1/chat/completions", { method: "POST", json: body, signal });
    } catch (error) {
      if (signal.aborted) throw new PlaygroundError("Stopped before the answer began.");
      throw error;
    }
    if (!response.ok) {
      const raw = await response.text();
      let parsed = null;
      try {
        parsed = JSON.parse(raw);
      } catch {
        parsed = null;
      }
      throw new ApiError(response.status, parsed, raw);
    }
    const meta = { ...metaFromHeaders(response.headers), latency_ms: null, cost: null };
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    let text = "";
    for (;;) {
      let value;
      let done;
      try {
        ({ value, done } = await reader.read());
      } catch (error) {
        if (signal.aborted) return { text, meta, roundTrip: performance.now() - started, stopped: true };
        throw error;
      }
      if (done) break;
      buffer += value.replaceAll("\r\n", "\n");
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const data = buffer.slice(0, end).split("\n").filter((line) => line.startsWith("data:")).map((line) => line.slice(5).trimStart()).join("\n");
        buffer = buffer.slice(end + 2);
        if (!data || data === "[DONE]") continue;
        const chunk = JSON.parse(data);
        if (chunk.error) throw new ApiError(response.status, chunk, data);
        const piece = chunk.choices && chunk.choices[0] && chunk.choices[0].delta ? chunk.choices[0].delta.content : "";
        if (piece) {
          text += piece;
          reply.textContent = text;
        }
      }
    }
    return { text, meta, roundTrip: performance.now() - started, stopped: false };
  }

  // --- audio --------------------------------------------------------------------------------
  let clip = null; // the File to send: the last upload or recording
  let recorder = null;

  function setClip(file, origin) {
    clip = file;
    const preview = $('[data-role="preview"]');
    if (preview.src) URL.revokeObjectURL(preview.src);
    preview.src = URL.createObjectURL(file);
    preview.hidden = false;
    $('[data-role="clip"]').textContent = `${origin}: ${file.name}, ${(file.size / 1024).toFixed(1)} KiB (${file.type || "unknown type"})`;
  }

  function audioMode() {
    return $('form[data-task="audio"] input[name="mode"]:checked').value;
  }

  for (const radio of $$('form[data-task="audio"] input[name="mode"]')) {
    radio.addEventListener("change", () => {
      const select = $('form[data-task="audio"] select[name="model"]');
      select.dataset.models = audioMode() === "intent" ? "intent" : "speech";
      fillModels(select, JSON.parse(select.dataset.all || "[]"));
    });
  }

  $('form[data-task="audio"] input[name="file"]').addEventListener("change", (event) => {
    const [file] = event.target.files;
    if (file) setClip(file, "Uploaded");
  });

  $('[data-action="record"]').addEventListener("click", async () => {
    const status = $('[data-role="clip"]');
    if (!navigator.mediaDevices || !window.MediaRecorder) {
      status.textContent = "This browser cannot record here (recording needs HTTPS or localhost); upload a file instead.";
      return;
    }
    let stream;
    try {
      stream = await navigator.mediaDevices.getUserMedia({ audio: true });
    } catch (error) {
      status.textContent = `No microphone: ${error.message}`;
      return;
    }
    const chunks = [];
    recorder = new MediaRecorder(stream);
    recorder.addEventListener("dataavailable", (event) => {
      if (event.data.size) chunks.push(event.data);
    });
    recorder.addEventListener("stop", () => {
      for (const track of stream.getTracks()) track.stop();
      const type = recorder.mimeType || "audio/webm";
      const extension = type.includes("ogg") ? "ogg" : type.includes("mp4") ? "m4a" : "webm";
      setClip(new File(chunks, `recording.${extension}`, { type }), "Recorded");
      $('[data-action="record"]').hidden = false;
      $('[data-action="stop-recording"]').hidden = true;
      recorder = null;
    });
    recorder.start();
    status.textContent = "Recording… press Stop when done.";
    $('[data-action="record"]').hidden = true;
    $('[data-action="stop-recording"]').hidden = false;
  });

  $('[data-action="stop-recording"]').addEventListener("click", () => {
    if (recorder && recorder.state !== "inactive") recorder.stop();
  });

  onSubmit("audio", async (form, box) => {
    if (!clip) throw new PlaygroundError("Upload or record some audio first.");
    const body = new FormData();
    body.append("file", clip, clip.name);
    body.append("model", form.model.value);
    if (audioMode() === "intent") {
      body.append("top_k", "3");
      const { data, roundTrip } = await api("/v1/intent", { method: "POST", form: body });
      showAnswer(box,
        el("p", { class: "output", "data-role": "transcript", text: data.transcription.text }),
        el("p", {}, "Intent: ", el("strong", { "data-role": "intent", text: data.intent }), ` (confidence ${data.confidence})`),
        el("ul", { class: "scores" }, data.top_k.map((x) => el("li", {}, el("meter", { min: 0, max: 1, value: x.score }), ` ${x.intent} ${x.score}`))));
      await answerWithTrace(box, metaFromBody(data), roundTrip);
      return;
    }
    body.append("response_format", "verbose_json");
    const { data, headers, roundTrip } = await api("/v1/audio/transcriptions", { method: "POST", form: body });
    showAnswer(box,
      el("p", { class: "output", "data-role": "transcript", text: data.text }),
      el("p", { class: "aside", text: `${data.language || "language unknown"} · ${Number(data.duration).toFixed(1)} s · ${data.segments.length} segments` }));
    await answerWithTrace(box, metaFromHeaders(headers), roundTrip);
  });

  // --- tabs and start -----------------------------------------------------------------------
  function showTab(name) {
    for (const tab of $$("[data-tab]")) tab.setAttribute("aria-selected", String(tab.dataset.tab === name));
    for (const panel of $$("[data-panel]")) panel.hidden = panel.dataset.panel !== name;
  }

  for (const tab of $$("[data-tab]")) tab.addEventListener("click", () => showTab(tab.dataset.tab));
  $("#key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    checkKey();
  });
  $("#remember-key").addEventListener("change", rememberKey);
  $("#forget-key").addEventListener("click", forgetKey);
  restoreKey();
  $("body").dataset.ready = "true";
})();
