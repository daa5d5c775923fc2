// DOM helpers: build elements without innerHTML (every value is text, never markup).

/** h('a', {href: '#/x', class: 'btn', onclick: fn}, 'text', child, [more]) */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key.startsWith('on') && typeof value === 'function') {
      el.addEventListener(key.slice(2), value);
    } else if (key === 'class') {
      el.className = value;
    } else if (key === 'dataset') {
      Object.assign(el.dataset, value);
    } else if (key === 'value' || key === 'checked' || key === 'selected') {
      el[key] = value;
    } else {
      el.setAttribute(key, value === true ? '' : String(value));
    }
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    if (Array.isArray(child)) append(el, child);
    else el.append(child instanceof Node ? child : String(child));
  }
}

/** A labelled form field. */
export function field(label, input, hint) {
  return h('label', {class: 'field'}, h('span', {class: 'label'}, label), input,
    hint ? h('span', {class: 'hint'}, hint) : null);
}

export function clear(el) {
  el.replaceChildren();
  return el;
}

/** DICOM DA "20260101" → "2026-01-01" (other text unchanged). */
export function fmtDate(value) {
  if (!value) return '';
  const m = /^(\d{4})(\d{2})(\d{2})$/.exec(value);
  return m ? `${m[1]}-${m[2]}-${m[3]}` : value;
}

/** DICOM TM "101010.123" → "10:10:10". */
export function fmtTime(value) {
  if (!value) return '';
  const m = /^(\d{2})(\d{2})?(\d{2})?/.exec(value);
  if (!m) return value;
  return [m[1], m[2] || '00', m[3] || '00'].join(':');
}

/** DICOM PN "Doe^John" → "Doe, John". */
export function fmtName(value) {
  if (!value) return '';
  if (typeof value === 'object') value = value.Alphabetic || '';
  const parts = String(value).split('=')[0].split('^').filter(Boolean);
  if (parts.length <= 1) return parts[0] || '';
  return `${parts[0]}, ${parts.slice(1).join(' ')}`;
}

export function fmtBytes(n) {
  if (n === null || n === undefined || n === '') return '';
  const units = ['B', 'KB', 'MB', 'GB', 'TB'];
  let v = Number(n);
  let i = 0;
  while (v >= 1024 && i < units.length - 1) { v /= 1024; i += 1; }
  return `${v.toFixed(i === 0 ? 0 : 1)} ${units[i]}`;
}

export function fmtDateTime(iso) {
  if (!iso) return '';
  const d = new Date(/[zZ]|[+-]\d\d:?\d\d$/.test(iso) ? iso : `${iso}Z`);
  if (Number.isNaN(d.getTime())) return iso;
  const pad = (x) => String(x).padStart(2, '0');
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ` +
    `${pad(d.getHours())}:${pad(d.getMinutes())}`;
}

/** "#/route?a=1" built from a route and a params object or URLSearchParams. */
export function hashUrl(route, params) {
  const q = params instanceof URLSearchParams ? params : new URLSearchParams();
  if (!(params instanceof URLSearchParams)) {
    for (const [k, v] of Object.entries(params || {})) {
      if (Array.isArray(v)) v.forEach((x) => q.append(k, x));
      else if (v !== undefined && v !== null && v !== '') q.set(k, v);
    }
  }
  const s = q.toString();
  return `#/${route}${s ? `?${s}` : ''}`;
}

/** A multi-valued attribute (a list, or DICOM text with backslashes) as "CT, MR". */
export function fmtList(value) {
  if (value === null || value === undefined) return '';
  return (Array.isArray(value) ? value : String(value).split('\\')).filter(Boolean).join(', ');
}
