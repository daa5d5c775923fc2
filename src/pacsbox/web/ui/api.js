// The REST client of the application: session cookie + CSRF header, JSON errors (SPEC E3).
import {t} from './i18n.js';

export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

let csrfToken = null;
let pending = 0;

export function setCsrf(token) {
  csrfToken = token || null;
  try {
    if (token) sessionStorage.setItem('pacsbox.csrf', token);
    else sessionStorage.removeItem('pacsbox.csrf');
  } catch {
    // storage disabled: the cookie still works
  }
}

function storedCsrf() {
  try {
    return sessionStorage.getItem('pacsbox.csrf');
  } catch {
    return null;
  }
}

function csrfCookie() {
  const m = /(?:^|;\s*)pacsbox_csrf=([^;]+)/.exec(document.cookie);
  return m ? decodeURIComponent(m[1]) : null;
}

/** The value of the X-CSRF-Token header for a state-changing request. */
export function csrfHeader() {
  return csrfToken || csrfCookie() || storedCsrf() || '';
}

/** The top progress bar shows while any request is in flight. */
function busy(delta) {
  pending += delta;
  const bar = document.getElementById('busy');
  if (bar) bar.hidden = pending <= 0;
}

async function errorMessage(r) {
  try {
    const body = await r.json();
    if (body && body.error && body.error.message) return body.error.message;
    if (body && body.detail) return String(body.detail);
  } catch {
    // not JSON
  }
  return `${r.status} ${r.statusText}`;
}

/**
 * request('/api/x', {method, body, query}) → {data, headers, status}.
 * body: a plain object (sent as JSON) or FormData. query: URLSearchParams or object.
 */
export async function request(path, {method = 'GET', body, query, accept} = {}) {
  const headers = {'X-Requested-With': 'pacsbox-ui', Accept: accept || 'application/json'};
  if (!['GET', 'HEAD'].includes(method)) headers['X-CSRF-Token'] = csrfHeader();
  let payload;
  if (body instanceof FormData) {
    payload = body;
  } else if (body !== undefined) {
    headers['Content-Type'] = 'application/json';
    payload = JSON.stringify(body);
  }
  let url = path;
  if (query) {
    const q = query instanceof URLSearchParams ? query : new URLSearchParams(
      Object.entries(query).filter(([, v]) => v !== undefined && v !== null && v !== ''));
    const s = q.toString();
    if (s) url += `?${s}`;
  }
  busy(1);
  let r;
  try {
    r = await fetch(url, {method, headers, body: payload, credentials: 'same-origin'});
  } catch {
    throw new ApiError(0, t('error.network'));
  } finally {
    busy(-1);
  }
  if (r.status === 401 && !/^\/api\/(login|otp|me\/password)/.test(path)) {
    window.dispatchEvent(new CustomEvent('pacsbox:unauthorized')); // the session ended
  }
  if (!r.ok) throw new ApiError(r.status, await errorMessage(r));
  const type = r.headers.get('content-type') || '';
  const data = type.includes('json') ? await r.json() : await r.text();
  return {data, headers: r.headers, status: r.status};
}

export async function api(path, options) {
  return (await request(path, options)).data;
}

/** The study's files as a zip, with a progress bar (bytes received / study size). */
export async function download(url, filename, onProgress) {
  busy(1);
  try {
    const r = await fetch(url, {credentials: 'same-origin',
      headers: {'X-Requested-With': 'pacsbox-ui'}});
    if (!r.ok) throw new ApiError(r.status, await errorMessage(r));
    const total = Number(r.headers.get('content-length')) || 0;
    const reader = r.body.getReader();
    const chunks = [];
    let received = 0;
    for (;;) {
      const {done, value} = await reader.read();
      if (done) break;
      chunks.push(value);
      received += value.length;
      if (onProgress) onProgress(received, total);
    }
    const blob = new Blob(chunks, {type: r.headers.get('content-type') || 'application/zip'});
    const link = document.createElement('a');
    link.href = URL.createObjectURL(blob);
    link.download = filename;
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(link.href), 60000);
    return received;
  } finally {
    busy(-1);
  }
}
