// Upload DICOM files from the browser (privilege upload): POST /api/instances (multipart),
// in batches, with a progress bar over the bytes sent and the DICOM status of every file
// (PS3.4 §B.2.3). Choose files or a folder, or drop them on the page.
import {h, hashUrl} from '../dom.js';
import {t} from '../i18n.js';
import {badge, progressBar, table} from '../widgets.js';
import {csrfHeader} from '../api.js';

const BATCH_FILES = 50;
const BATCH_BYTES = 64 * 1024 * 1024;

function batches(files) {
  const out = [];
  let current = [];
  let bytes = 0;
  for (const f of files) {
    if (current.length && (current.length >= BATCH_FILES || bytes + f.size > BATCH_BYTES)) {
      out.push(current);
      current = [];
      bytes = 0;
    }
    current.push(f);
    bytes += f.size;
  }
  if (current.length) out.push(current);
  return out;
}

/** One multipart POST with upload progress (fetch has none): resolves {status, body}. */
function send(files, onProgress) {
  return new Promise((resolve) => {
    const form = new FormData();
    for (const f of files) form.append('file', f, f.webkitRelativePath || f.name);
    const xhr = new XMLHttpRequest();
    xhr.open('POST', '/api/instances');
    xhr.setRequestHeader('X-Requested-With', 'pacsbox-ui');
    xhr.setRequestHeader('X-CSRF-Token', csrfHeader());
    xhr.setRequestHeader('Accept', 'application/json');
    xhr.upload.onprogress = (e) => onProgress(e.loaded);
    xhr.onload = () => {
      let body = null;
      try { body = JSON.parse(xhr.responseText); } catch { body = null; }
      resolve({status: xhr.status, body});
    };
    xhr.onerror = () => resolve({status: 0, body: null});
    xhr.send(form);
  });
}

export async function render({el}) {
  const input = h('input', {type: 'file', multiple: true, 'aria-label': t('upload.choose')});
  const folder = h('input', {type: 'file', multiple: true, webkitdirectory: true, 'aria-label': t('upload.folder')});
  const zone = h('div', {class: 'drop-zone', tabindex: 0}, t('upload.drop'));
  const out = h('section', {class: 'upload-results', 'aria-live': 'polite'});
  el.append(h('h1', {}, t('nav.upload')), h('p', {class: 'muted'}, t('upload.help')),
    h('div', {class: 'upload-pick'}, h('label', {class: 'field'}, h('span', {class: 'label'}, t('upload.choose')), input),
      h('label', {class: 'field'}, h('span', {class: 'label'}, t('upload.folder')), folder)), zone, out);

  const start = async (fileList) => {
    const files = [...fileList].filter((f) => f.size > 0);
    if (!files.length) return;
    const total = files.reduce((n, f) => n + f.size, 0);
    const progress = progressBar(t('upload.sending', {n: files.length}));
    const rows = [];
    const summary = h('p', {class: 'upload-summary'});
    out.replaceChildren(progress.el, summary);
    let sentBytes = 0;
    let stored = 0;
    let failed = 0;
    for (const group of batches(files)) {
      const size = group.reduce((n, f) => n + f.size, 0);
      const {status, body} = await send(group, (loaded) => progress.update(sentBytes + loaded, total,
        t('upload.progress', {mb: ((sentBytes + loaded) / 1048576).toFixed(1), total: (total / 1048576).toFixed(1)})));
      sentBytes += size;
      if (body && Array.isArray(body.results)) {
        for (const r of body.results) {
          rows.push(r);
          if (r.status === '0000') stored += 1; else failed += 1;
        }
      } else {
        const message = (body && body.error && body.error.message) || `HTTP ${status}`;
        for (const f of group) rows.push({file: f.name, status: '', outcome: 'failed', message});
        failed += group.length;
      }
      summary.textContent = t('upload.summary', {stored, failed});
    }
    progress.update(total, total, t('upload.done'));
    out.append(table([
      {label: t('upload.file'), value: (r) => r.file || ''},
      {label: t('upload.status'), value: (r) => badge(`${r.status || '—'} ${r.outcome || ''}`.trim(), r.status === '0000' ? 'ok' : 'bad')},
      {label: t('upload.detail'), value: (r) => (r.study_instance_uid
        ? h('a', {href: hashUrl('study', {uid: r.study_instance_uid})}, t('upload.open_study')) : r.message || '')},
    ], rows));
  };
  input.addEventListener('change', () => start(input.files));
  folder.addEventListener('change', () => start(folder.files));
  zone.addEventListener('dragover', (e) => { e.preventDefault(); zone.classList.add('over'); });
  zone.addEventListener('dragleave', () => zone.classList.remove('over'));
  zone.addEventListener('drop', (e) => {
    e.preventDefault();
    zone.classList.remove('over');
    start(e.dataTransfer.files);
  });
  zone.addEventListener('keydown', (e) => { if (e.key === 'Enter') input.click(); });
}
