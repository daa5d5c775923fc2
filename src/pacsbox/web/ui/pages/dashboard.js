// Dashboard (issue 6 item 5): GET /api/dashboard — counts, storage, arrivals in the last
// 24 h by source AE, listeners.
import {api} from '../api.js';
import {fmtBytes, fmtDateTime, h, hashUrl} from '../dom.js';
import {t} from '../i18n.js';
import {badge, table} from '../widgets.js';

function card(label, value, sub) {
  return h('div', {class: 'stat'}, h('span', {class: 'stat-value'}, value), h('span', {class: 'stat-label'}, label),
    sub ? h('span', {class: 'muted small'}, sub) : null);
}

const pick = (obj, ...keys) => keys.map((k) => obj?.[k]).find((v) => v !== undefined && v !== null);

export async function render({el}) {
  const d = await api('/api/dashboard');
  const counts = d.counts || {};
  const disk = d.disk || {};
  const used = d.bytes_stored;
  const free = disk.free;
  const total = disk.total;
  el.append(h('h1', {}, t('nav.dashboard')), h('div', {class: 'stats'},
    card(t('dash.patients'), String(pick(counts, 'patients') ?? '—')),
    card(t('dash.studies'), String(pick(counts, 'studies') ?? '—')),
    card(t('dash.series'), String(pick(counts, 'series') ?? '—')),
    card(t('dash.instances'), String(pick(counts, 'instances') ?? '—')),
    card(t('dash.stored'), fmtBytes(used) || '—'),
    card(t('dash.free'), fmtBytes(free) || '—', total ? t('dash.of', {total: fmtBytes(total)}) : null)));
  if (free !== undefined && total) {
    const bar = h('progress', {max: total, value: total - free, 'aria-label': t('dash.disk_use')});
    el.append(h('div', {class: 'disk'}, h('span', {class: 'muted'}, t('dash.disk_use')), bar));
  }
  const rows = d.arrivals_24h || [];
  const last = d.last_arrival;
  el.append(h('h2', {}, t('dash.arrivals')), last ? h('p', {class: 'muted'}, t('dash.last_arrival', {at: fmtDateTime(last)})) : null,
    table([
      {label: t('col.source_ae'), value: (r) => (r.source_ae ? h('a', {href: hashUrl('list', {sourceae: r.source_ae, receiveddate: 'pastweek'})}, r.source_ae) : '—')},
      {label: t('dash.studies'), class: 'num', value: (r) => String(r.studies ?? '')},
      {label: t('dash.instances'), class: 'num', value: (r) => String(r.instances ?? '')},
    ], rows, {empty: t('dash.no_arrivals')}));
  const lrows = d.listeners || [];
  el.append(h('h2', {}, t('dash.listeners')), table([
    {label: t('dash.listener'), value: (r) => r.name},
    {label: t('dash.port'), class: 'num', value: (r) => String(r.port ?? '')},
    {label: t('dash.detail'), value: (r) => r.ae_title || ''},
    {label: t('dash.status'), value: (r) => (!r.enabled ? badge(t('dash.disabled'))
      : r.accepting ? badge(t('dash.up'), 'ok') : badge(t('dash.down'), 'bad'))},
  ], lrows));
}
