// Audit log viewer (issue 6 item 5): GET /api/audit with its filters (user, action, outcome,
// study_uid, object, since, until) kept in the hash so a filtered view can be linked.
import {request} from '../api.js';
import {field, fmtDateTime, h, hashUrl} from '../dom.js';
import {t} from '../i18n.js';
import {badge, errorBox, pager, table} from '../widgets.js';

const FILTERS = ['user', 'action', 'outcome', 'study_uid', 'object', 'since', 'until'];
const ACTIONS = ['', 'read', 'store', 'modify', 'export', 'delete', 'forward', 'share', 'login', 'login-failed', 'logout', 'admin'];
const OUTCOMES = ['', 'success', 'failure', 'denied'];

export async function render({el, params, navigate}) {
  const limit = Number(params.get('limit')) || 50;
  const offset = Number(params.get('offset')) || 0;
  const inputs = {};
  const make = (key) => {
    let input;
    if (key === 'action' || key === 'outcome') {
      const options = key === 'action' ? ACTIONS : OUTCOMES;
      input = h('select', {name: key}, options.map((o) => h('option', {value: o, selected: params.get(key) === o}, o || t('common.any'))));
    } else {
      input = h('input', {name: key, type: key === 'since' || key === 'until' ? 'datetime-local' : 'text', value: params.get(key) || ''});
    }
    inputs[key] = input;
    return field(t(`audit.${key}`), input);
  };
  const form = h('form', {class: 'filters'}, h('div', {class: 'grid'}, FILTERS.map(make)),
    h('div', {class: 'form-actions'}, h('button', {type: 'submit', class: 'primary'}, t('list.search')),
      h('button', {type: 'button', class: 'ghost', onclick: () => navigate('#/audit')}, t('list.clear'))));
  form.addEventListener('submit', (e) => {
    e.preventDefault();
    navigate(hashUrl('audit', Object.fromEntries(FILTERS.map((k) => [k, inputs[k].value.trim()]))));
  });
  el.append(h('h1', {}, t('nav.audit')), form);
  const query = new URLSearchParams();
  for (const k of FILTERS) {
    let v = params.get(k);
    if (!v) continue;
    if ((k === 'since' || k === 'until') && !Number.isNaN(new Date(v).getTime())) {
      v = new Date(v).toISOString(); // the form's local time, sent as UTC
    }
    query.set(k, v);
  }
  query.set('limit', limit);
  query.set('offset', offset);
  let answer;
  try {
    answer = await request('/api/audit', {query});
  } catch (err) {
    el.append(errorBox(err));
    return;
  }
  const total = Number(answer.headers.get('x-total-count')) || answer.data.length;
  el.append(table([
    {label: t('audit.time'), class: 'nowrap', value: (r) => fmtDateTime(r.at)},
    {label: t('audit.user'), value: (r) => r.username || ''},
    {label: t('audit.action'), value: (r) => r.action},
    {label: t('audit.outcome'), value: (r) => badge(r.outcome || '', r.outcome === 'success' ? 'ok' : 'bad')},
    {label: t('audit.client'), value: (r) => r.client || ''},
    {label: t('audit.object'), value: (r) => r.study_uid ? h('a', {href: hashUrl('study', {uid: r.study_uid}), class: 'mono small'}, r.study_uid) : (r.object || '')},
    {label: t('audit.detail'), value: (r) => r.detail || ''},
  ], answer.data, {empty: t('common.nothing')}), pager({offset, limit, total, onChange: (o, l) => {
    const next = new URLSearchParams(params);
    next.set('offset', o);
    next.set('limit', l);
    navigate(hashUrl('audit', next));
  }}));
}
