// sendtopacs web UI (SPEC S7): a client of the service's /api; no framework, no build step.
"use strict";

const $ = (sel, root = document) => root.querySelector(sel);
const $$ = (sel, root = document) => Array.from(root.querySelectorAll(sel));
const state = { files: [], settings: null, patient: null, job: null, poll: null };

async function api(method, path, body, isForm) {
  const opts = { method, headers: {} };
  if (body !== undefined) {
    if (isForm) {
      opts.body = body;
    } else {
      opts.headers["Content-Type"] = "application/json";
      opts.body = JSON.stringify(body);
    }
  }
  const resp = await fetch(path, opts);
  let data = null;
  const text = await resp.text();
  try { data = text ? JSON.parse(text) : null; } catch (e) { data = { error: text }; }
  if (!resp.ok) {
    const err = new Error((data && data.error) || resp.statusText);
    err.status = resp.status;
    err.data = data;
    throw err;
  }
  return data;
}

function log(line, stamped) {
  const el = $("#log");
  const stamp = new Date().toTimeString().slice(0, 8);
  el.textContent += stamped ? `${line}\n` : `${stamp} ${line}\n`;
  el.scrollTop = el.scrollHeight;
}

function human(n) {
  if (n < 1024) return `${n} B`;
  if (n < 1 << 20) return `${(n / 1024).toFixed(1)} KB`;
  return `${(n / (1 << 20)).toFixed(1)} MB`;
}

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(c ?? ""));
  return node;
}

// -- navigation ------------------------------------------------------------------------------
$$("button.nav").forEach((b) => b.addEventListener("click", () => {
  $$("button.nav").forEach((x) => x.classList.toggle("active", x === b));
  $$(".view").forEach((v) => { v.hidden = v.id !== `view-${b.dataset.view}`; });
  if (b.dataset.view === "settings") loadSettings();
  if (b.dataset.view === "monitor") loadMonitor();
}));
$$("button.tab").forEach((b) => b.addEventListener("click", () => {
  $$("button.tab").forEach((x) => x.classList.toggle("active", x === b));
  $$(".tabpane").forEach((p) => { p.hidden = p.dataset.pane !== b.dataset.tab; });
}));

// -- file list ----------------------------------------------------------------------------------
const MARK = { sent: "✓", converted: "✓", failed: "✗", sending: "…", converting: "…", queued: "…" };

function renderFiles() {
  const body = $("#files tbody");
  body.replaceChildren();
  for (const f of state.files) {
    const jf = state.job && state.job.files.find((x) => x.file_id === f.id);
    const progress = jf ? jf.progress : (f.state === "sent" ? 1 : 0);
    const st = jf ? jf.state : f.state;
    const msg = jf ? jf.message : f.message;
    const row = el("tr", { "data-id": f.id, class: `state-${st}` },
      el("td", { class: "mark", title: st }, MARK[st] || ""),
      el("td", {}, f.name),
      el("td", {}, f.dicom ? "DICOM" : "non-DICOM"),
      el("td", {}, human(f.size)),
      el("td", { class: "state" }, st),
      el("td", {}, el("progress", { max: "1", value: String(progress) })),
      el("td", { class: "message" }, msg || ""),
      el("td", {}, el("button", { class: "small", title: "Remove from the list",
        onclick: async () => { await api("DELETE", `/api/files/${f.id}`); await loadFiles(); } }, "Remove")));
    body.append(row);
  }
}

async function loadFiles() {
  state.files = await api("GET", "/api/files");
  renderFiles();
  refreshStatus();
}

async function upload(fileList) {
  if (!fileList || !fileList.length) return;
  const form = new FormData();
  for (const f of fileList) form.append("files", f, f.name);
  try {
    const added = await api("POST", "/api/files", form, true);
    log(`added ${added.length} file(s)`);
  } catch (e) {
    log(`upload failed: ${e.message}`);
  }
  await loadFiles();
}

$("#add-input").addEventListener("change", (ev) => { upload(ev.target.files); ev.target.value = ""; });
const drop = $("#drop");
["dragenter", "dragover"].forEach((t) => document.addEventListener(t, (ev) => {
  ev.preventDefault(); drop.classList.add("over");
}));
["dragleave", "drop"].forEach((t) => document.addEventListener(t, (ev) => {
  ev.preventDefault(); drop.classList.remove("over");
}));
document.addEventListener("drop", (ev) => upload(ev.dataTransfer && ev.dataTransfer.files));

$("#btn-clear").addEventListener("click", async () => { await api("DELETE", "/api/files"); await loadFiles(); });
$("#btn-remove-sent").addEventListener("click", async () => {
  await api("DELETE", "/api/files?state_filter=sent"); await loadFiles();
});

// -- devices -------------------------------------------------------------------------------------
async function loadDevices() {
  const devices = await api("GET", "/api/devices");
  const sel = $("#send-device");
  sel.replaceChildren(...devices.map((d) => {
    const o = el("option", { value: d.name }, `${d.name} (${d.ae_title}@${d.host}:${d.port})`);
    if (d.default) o.selected = true;
    return o;
  }));
  const body = $("#devices tbody");
  body.replaceChildren(...devices.map((d) => el("tr", {},
    el("td", {}, d.name), el("td", {}, d.ae_title), el("td", {}, d.host), el("td", {}, String(d.port)),
    el("td", {}, String(d.files_per_association || "all")), el("td", {}, d.decompress ? "yes" : ""),
    el("td", {}, d.default ? "default" : ""),
    el("td", {},
      el("button", { type: "button", class: "small", onclick: () => echo(d.name) }, "Echo"),
      el("button", { type: "button", class: "small", onclick: () => editDevice(d) }, "Edit"),
      el("button", { type: "button", class: "small", onclick: async () => {
        if (!confirm(`Delete device ${d.name}?`)) return;
        await api("DELETE", `/api/devices/${encodeURIComponent(d.name)}`); loadDevices();
      } }, "Delete")))));
  return devices;
}

async function echo(name) {
  if (!name) { log("no device selected"); return; }
  try {
    const r = await api("POST", `/api/devices/${encodeURIComponent(name)}/echo`);
    log(r.message);
    $("#settings-msg").textContent = r.message;
    $("#settings-msg").className = r.ok ? "" : "error";
  } catch (e) { log(`echo failed: ${e.message}`); $("#settings-msg").textContent = e.message; }
}
$("#btn-echo").addEventListener("click", () => echo($("#send-device").value));

function editDevice(d) {
  $("#dev-name").value = d.name; $("#dev-description").value = d.description || "";
  $("#dev-ae").value = d.ae_title; $("#dev-host").value = d.host; $("#dev-port").value = d.port;
  $("#dev-charset").value = d.character_set || ""; $("#dev-fpa").value = d.files_per_association;
  $("#dev-decompress").checked = d.decompress; $("#dev-default").checked = d.default;
  $("#dev-name").dataset.editing = d.name;
}

$("#dev-save").addEventListener("click", async () => {
  const body = {
    name: $("#dev-name").value.trim(), description: $("#dev-description").value,
    ae_title: $("#dev-ae").value.trim(), host: $("#dev-host").value.trim(),
    port: Number($("#dev-port").value), character_set: $("#dev-charset").value.trim(),
    files_per_association: Number($("#dev-fpa").value || 0),
    decompress: $("#dev-decompress").checked, default: $("#dev-default").checked,
  };
  const editing = $("#dev-name").dataset.editing;
  try {
    if (editing && editing === body.name) {
      await api("PUT", `/api/devices/${encodeURIComponent(editing)}`, body);
    } else {
      await api("POST", "/api/devices", body);
    }
    delete $("#dev-name").dataset.editing;
    $("#settings-msg").textContent = `device ${body.name} saved`;
    await loadDevices();
  } catch (e) { $("#settings-msg").textContent = e.message; }
});

// -- patient data ------------------------------------------------------------------------------
function fillModalities(modalities, preset) {
  const sel = $("#patient-form [name=modality]");
  sel.replaceChildren(...modalities.map((m) => el("option", { value: m }, m)));
  if (preset) sel.value = preset;
}

function todayParts() {
  const d = new Date();
  const pad = (n) => String(n).padStart(2, "0");
  return [`${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}`,
    `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`];
}

$("#btn-info").addEventListener("click", async () => {
  const settings = state.settings || await api("GET", "/api/settings");
  state.settings = settings;
  fillModalities(settings.modalities || ["OT"], (state.patient && state.patient.modality) || settings.default_modality);
  const form = $("#patient-form");
  const p = state.patient || {};
  const [d, t] = todayParts();
  for (const input of $$("input, select", form)) {
    if (input.name === "modality") continue;
    input.value = p[input.name] || "";
  }
  if (!form.study_date.value) form.study_date.value = d;
  if (!form.study_time.value) form.study_time.value = t;
  $("#patient-errors").textContent = state.worklistOnly
    ? "Worklist only: pick the patient with Search worklist…" : "";
  for (const input of $$("input", form)) input.readOnly = !!state.worklistOnly;
  $("#patient-dialog").showModal();
});

function patientFromForm() {
  const form = $("#patient-form");
  const p = {};
  for (const input of $$("input, select", form)) if (input.name) p[input.name] = input.value.trim();
  return p;
}

$("#patient-save").addEventListener("click", () => {
  const p = patientFromForm();
  const missing = [];
  if (!p.patient_id) missing.push("Patient ID");
  if (!p.last_name) missing.push("Last name");
  if (!p.study_date) missing.push("Study date");
  if (!p.study_time) missing.push("Study time");
  if (!p.modality) missing.push("Modality");
  if (state.worklistOnly && !state.worklistRef) missing.push("a worklist entry (Search worklist…)");
  if (missing.length) { $("#patient-errors").textContent = `Required: ${missing.join(", ")}`; return; }
  state.patient = p;
  $("#patient-summary").textContent =
    `Patient: ${p.patient_id} ${p.last_name}${p.first_name ? "^" + p.first_name : ""}, ` +
    `study ${p.study_date} ${p.study_time}, modality ${p.modality}`;
  $("#patient-dialog").close();
});
$("#patient-cancel").addEventListener("click", () => $("#patient-dialog").close());

// -- worklist search ----------------------------------------------------------------------------
$("#btn-search").addEventListener("click", async () => {
  const sel = $("#search-form [name=device]");
  try {
    const devices = await api("GET", "/api/worklist/devices");
    sel.replaceChildren(...devices.map((d) => el("option", { value: d.name }, `${d.name} (${d.kind})`)));
    $("#search-msg").textContent = devices.length ? "" : "No worklist device is configured (Settings → Worklist).";
  } catch (e) { $("#search-msg").textContent = e.message; }
  const p = patientFromForm();
  const form = $("#search-form");
  form.patient_id.value = p.patient_id || "";
  form.patient_name.value = p.last_name ? `${p.last_name}*` : "";
  $("#search-results tbody").replaceChildren();
  $("#search-dialog").showModal();
});
$("#search-close").addEventListener("click", () => $("#search-dialog").close());

$("#search-run").addEventListener("click", async () => {
  const form = $("#search-form");
  const query = {};
  for (const k of ["patient_id", "patient_name", "accession_number", "modality", "date"]) {
    if (form[k].value.trim()) query[k] = form[k].value.trim();
  }
  $("#search-msg").textContent = "searching…";
  try {
    const r = await api("POST", "/api/worklist/search", { device: form.device.value, query });
    $("#search-msg").textContent = `${r.matches.length} match(es)`;
    $("#search-results tbody").replaceChildren(...r.matches.map((m) => {
      const p = m.patient;
      return el("tr", {},
        el("td", {}, p.patient_id), el("td", {}, p.patient_name), el("td", {}, p.birth_date),
        el("td", {}, p.accession_number), el("td", {}, m.modality),
        el("td", {}, m.sps_start_date || p.study_date), el("td", {}, p.study_description || m.sps_description),
        el("td", {}, el("button", { type: "button", class: "small", onclick: () => pick(m) }, "Select")));
    }));
  } catch (e) { $("#search-msg").textContent = e.message; }
});

function isoDate(da) { return da && da.length === 8 ? `${da.slice(0, 4)}-${da.slice(4, 6)}-${da.slice(6)}` : ""; }

function pick(match) {
  state.worklistRef = match.ref;
  const form = $("#patient-form");
  const p = match.patient;
  for (const k of ["patient_id", "last_name", "first_name", "middle_name", "sex", "accession_number",
    "study_description", "referring_physician", "study_instance_uid"]) {
    if (form[k]) form[k].value = p[k] || "";
  }
  form.birth_date.value = isoDate(p.birth_date);
  if (match.modality) {
    const sel = form.modality;
    if (![...sel.options].some((o) => o.value === match.modality)) sel.append(el("option", { value: match.modality }, match.modality));
    sel.value = match.modality;
  }
  $("#search-dialog").close();
}

// -- send -----------------------------------------------------------------------------------------
$("#btn-send").addEventListener("click", async () => {
  const pending = state.files.filter((f) => f.state !== "sent");
  if (!pending.length) { log("nothing to send"); return; }
  const body = { files: pending.map((f) => f.id), device: $("#send-device").value };
  if (pending.some((f) => !f.dicom)) {
    if (!state.patient) { log("enter the non-DICOM files info first"); $("#btn-info").click(); return; }
    const p = { ...state.patient };
    const options = {};
    if (p.modality) options.modality = p.modality;
    delete p.modality;
    p.study_date = (p.study_date || "").replaceAll("-", "");
    p.birth_date = (p.birth_date || "").replaceAll("-", "");
    if (state.worklistOnly) body.worklist_ref = state.worklistRef;
    else body.patient = p;
    body.options = options;
  }
  if (pending.some((f) => f.dicom)) {
    body.replace_worklist_info = $("#replace-wl").checked;
    if (body.replace_worklist_info) {
      if (!state.worklistRef) { log("pick the worklist entry for the DICOM files first (Search worklist…)"); return; }
      body.worklist_ref = state.worklistRef;
    }
  }
  try {
    const job = await api("POST", "/api/send", body);
    state.job = job;
    log(`job ${job.id}: sending ${job.files.length} file(s) to ${job.device}`);
    watchJob(job.id);
  } catch (e) {
    log(`send refused: ${e.message}${e.data && e.data.errors ? " — " + e.data.errors.join("; ") : ""}`);
  }
});

function watchJob(id) {
  clearInterval(state.poll);
  let seen = 0;
  state.poll = setInterval(async () => {
    try {
      const job = await api("GET", `/api/jobs/${id}`);
      state.job = job;
      for (const line of job.log.slice(seen)) log(line, true);
      seen = job.log.length;
      renderFiles();
      if (job.state === "done" || job.state === "failed") {
        clearInterval(state.poll);
        log(`job ${id} ${job.state}: ${job.ok} ok, ${job.failed} failed`);
        await loadFiles();
      }
    } catch (e) { clearInterval(state.poll); log(`status: ${e.message}`); }
  }, 400);
}

// -- settings -------------------------------------------------------------------------------------
const LISTS = ["modalities", "additional_info_values", "service.allowed_ips"];
const TAB_KEYS = new Set(["ae_title", "institution_name", "station_name", "service", "default_modality",
  "modalities", "character_set", "image_encoding", "jpeg_quality", "tiff_split", "verify_jpeg",
  "video_format", "video_fallback", "additional_info_tag", "additional_info_values",
  "additional_info_default", "sop_classes", "devices", "worklist_devices", "monitors"]);

function getPath(obj, path) { return path.split(".").reduce((o, k) => (o == null ? undefined : o[k]), obj); }
function setPath(obj, path, value) {
  const keys = path.split(".");
  let o = obj;
  for (const k of keys.slice(0, -1)) o = o[k] = o[k] || {};
  o[keys[keys.length - 1]] = value;
}

async function loadSettings() {
  delete document.body.dataset.settings;
  const s = await api("GET", "/api/settings");
  state.settings = s;
  const form = $("#settings-form");
  for (const input of $$("[name]", form)) {
    const v = getPath(s, input.name);
    if (input.type === "checkbox") input.checked = !!v;
    else if (input.dataset.json !== undefined) input.value = JSON.stringify(v ?? [], null, 1);
    else if (LISTS.includes(input.name)) input.value = (v || []).join(", ");
    else input.value = v ?? "";
  }
  const extra = {};
  for (const [k, v] of Object.entries(s)) if (!TAB_KEYS.has(k)) extra[k] = v;
  $("#dicom-extra").value = JSON.stringify(extra, null, 1);
  $("#cred-state").textContent = s.service.password_set ? `required (user ${s.service.username})` : "not set";
  await loadDevices();
  document.body.dataset.settings = "loaded";
}

$("#settings-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const s = JSON.parse(JSON.stringify(state.settings));
  const msg = $("#settings-msg");
  try {
    for (const input of $$("[name]", ev.target)) {
      let v;
      if (input.type === "checkbox") v = input.checked;
      else if (input.dataset.json !== undefined) v = JSON.parse(input.value || "[]");
      else if (LISTS.includes(input.name)) v = input.value.split(",").map((x) => x.trim()).filter(Boolean);
      else if (input.type === "number") v = Number(input.value);
      else v = input.value;
      setPath(s, input.name, v);
    }
    Object.assign(s, JSON.parse($("#dicom-extra").value || "{}"));
  } catch (e) { msg.textContent = `not valid JSON: ${e.message}`; return; }
  delete s.devices; // devices are changed through their own form
  s.devices = (await api("GET", "/api/devices"));
  try {
    state.settings = await api("PUT", "/api/settings", s);
    msg.textContent = "saved";
  } catch (e) { msg.textContent = e.message; }
});

// -- monitor --------------------------------------------------------------------------------------
async function loadMonitor() {
  const m = await api("GET", "/api/monitor");
  $("#monitors tbody").replaceChildren(...m.monitors.map((x) => el("tr", {},
    el("td", {}, x.folder), el("td", {}, x.mode), el("td", {}, x.method), el("td", {}, String(x.pending)),
    el("td", {}, String(x.counts.done || 0)), el("td", {}, String(x.counts.failed || 0)),
    el("td", {}, x.last_error || ""))));
  $("#monitor-files tbody").replaceChildren(...m.files.map((f) => el("tr", { class: `state-${f.state}` },
    el("td", {}, f.path), el("td", {}, f.state), el("td", {}, String(f.attempts)), el("td", {}, f.reason || ""))));
}

// -- start ----------------------------------------------------------------------------------------
async function refreshStatus() {
  try {
    const s = await api("GET", "/api/status");
    $("#status").textContent = `AE ${s.ae_title} · ${s.files} file(s) · ${s.monitors.length} monitored folder(s)`;
  } catch (e) { $("#status").textContent = `service: ${e.message}`; }
}

(async () => {
  try {
    state.settings = await api("GET", "/api/settings");
    const wl = await api("GET", "/api/worklist/devices");
    state.worklistOnly = wl.some((d) => d.worklist_only);
    $("#replace-wl").checked = state.settings.dicom_mode === "worklist";
    await loadDevices();
    await loadFiles();
  } catch (e) { log(`cannot reach the service: ${e.message}`); }
  refreshStatus();
  setInterval(() => { if (!document.hidden) { refreshStatus(); if (!state.job || state.job.state !== "running") loadFiles(); } }, 5000);
  setInterval(() => { if (!document.hidden && !$("#view-monitor").hidden) loadMonitor().catch(() => {}); }, 2000);
  document.body.dataset.ready = "1";
})();
