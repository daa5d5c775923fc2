// Study list (SPEC E4): the hash parameters ARE the search, passed unchanged to
// GET /api/studylist (keys and operators =, =!=, =>>, =>=, =<<, =<=, =**, repeated keys = OR,
// ~a~b ranges, today/yesterday/pastweek/pastmonth are parsed by the server).
import {api, request} from '../api.js';
import {field, fmtDate, fmtDateTime, fmtList, fmtName, fmtTime, h, hashUrl} from '../dom.js';
import {t} from '../i18n.js';
import {errorBox, pager, table} from '../widgets.js';
import {studyActions} from './actions.js';

/** Form fields: [URL key, i18n key, repeatable (comma = OR)]. */
const MAIN_FIELDS = [
  ['patientname', 'key.patientname'],
  ['patientid', 'key.patientid', true],
  ['accessionnumber', 'key.accessionnumber'],
  ['studydate', 'key.studydate'],
  ['modality', 'key.modality', true],
  ['studydescription', 'key.studydescription'],
];
const MORE_FIELDS = [
  ['patientbirthdate', 'key.patientbirthdate'],
  ['patientsex', 'key.patientsex'],
  ['studyid', 'key.studyid'],
  ['studytime', 'key.studytime'],
  ['referringphysicianname', 'key.referringphysicianname'],
  ['institutionname', 'key.institutionname'],
  ['sourceae', 'key.sourceae'],
  ['receiveddate', 'key.receiveddate'],
  ['seriesdescription', 'key.seriesdescription'],
  ['bodypartexamined', 'key.bodypartexamined'],
  ['patientcomments', 'key.patientcomments'],
  ['studyinstanceuid', 'key.studyinstanceuid'],
  ['seriesinstanceuid', 'key.seriesinstanceuid'],
  ['sopinstanceuid', 'key.sopinstanceuid'],
];
const PAGING = ['sort', 'limit', 'offset'];
const DEFAULT_LIMIT = 50;

export async function render({el, params, navigate, can, isCurrent}) {
  const search = new URLSearchParams();
  for (const [k, v] of params) if (!PAGING.includes(k)) search.append(k, v);
  const sort = params.get('sort') || '';
  const limit = Number(params.get('limit')) || DEFAULT_LIMIT;
  const offset = Number(params.get('offset')) || 0;

  const go = (changes) => {
    const next = new URLSearchParams(search);
    const s = changes.sort ?? sort;
    if (s) next.set('sort', s);
    const l = changes.limit ?? limit;
    if (l !== DEFAULT_LIMIT) next.set('limit', l);
    const o = changes.offset ?? 0;
    if (o) next.set('offset', o);
    navigate(hashUrl('list', next));
  };

  el.append(h('h1', {class: 'sr'}, t('nav.list')), filterForm(search, navigate, sort, limit));
  const results = h('section', {class: 'results', 'aria-live': 'polite'});
  el.append(results);

  const query = new URLSearchParams(search);
  if (sort) query.set('sort', sort);
  query.set('limit', limit);
  query.set('offset', offset);
  let answer;
  try {
    answer = await request('/api/studylist', {query});
  } catch (err) {
    results.append(errorBox(err));
    return;
  }
  const {total, items} = answer.data;
  const live = liveArrivals({isCurrent, refresh: () => go({offset})});
  const serverMs = answer.headers.get('x-server-time-ms');
  const columns = [
    {label: '', class: 'actions', value: (r) => studyActions(r, {can, compact: true, onDeleted: () => go({offset})})},
    {label: t('col.patient_name'), sort: 'patientname', value: (r) => fmtName(r.patient_name)},
    {label: t('col.patient_id'), key: 'patient_id', sort: 'patientid', value: (r) => r.patient_id || ''},
    {label: t('col.birth_date'), sort: 'patientbirthdate', value: (r) => fmtDate(r.patient_birth_date), class: 'nowrap'},
    {label: t('col.sex'), sort: 'patientsex', value: (r) => r.patient_sex || ''},
    {label: t('col.study_date'), sort: 'studydate', class: 'nowrap',
      value: (r) => `${fmtDate(r.study_date)} ${fmtTime(r.study_time)}`.trim()},
    {label: t('col.modalities'), sort: 'modalitiesinstudy', value: (r) => fmtList(r.modalities_in_study)},
    {label: t('col.description'), sort: 'studydescription', value: (r) => r.study_description || ''},
    {label: t('col.accession'), sort: 'accessionnumber', value: (r) => r.accession_number || ''},
    {label: t('col.counts'), sort: 'numinstances', class: 'num', value: (r) => `${r.num_series ?? ''} / ${r.num_instances ?? ''}`},
    {label: t('col.source_ae'), sort: 'sourceae', value: (r) => r.source_ae || ''},
    {label: t('col.received'), sort: 'receivedat', class: 'nowrap', value: (r) => fmtDateTime(r.received_at)},
  ];
  results.append(
    h('div', {class: 'results-head'},
      h('span', {class: 'total', 'data-total': total}, t('list.total', {n: total})),
      serverMs ? h('span', {class: 'muted small'}, t('list.server_time', {ms: serverMs})) : null,
      live),
    table(columns, items, {
      sort,
      onSort: (s) => go({sort: s}),
      onRow: (r) => navigate(hashUrl('study', {uid: r.study_instance_uid})),
      rowLabel: (r) => `${fmtName(r.patient_name)} ${fmtDate(r.study_date)}`,
      empty: t('list.empty'),
    }),
    pager({offset, limit, total, onChange: (o, l) => go({offset: o, limit: l})}));
}

function filterForm(search, navigate, sort, limit) {
  const inputs = {};
  const make = ([key, label, multi]) => {
    const values = search.getAll(key);
    let input;
    if (key === 'patientsex') {
      input = h('select', {name: key}, ['', 'M', 'F', 'O'].map((v) =>
        h('option', {value: v, selected: values[0] === v}, v ? t(`sex.${v}`) : t('common.any'))));
    } else {
      input = h('input', {name: key, value: values.join(multi ? ', ' : ''), autocomplete: 'off',
        spellcheck: 'false', placeholder: t(`ph.${key}`) === `ph.${key}` ? '' : t(`ph.${key}`)});
    }
    inputs[key] = {input, multi};
    return field(t(label), input);
  };
  const quick = h('div', {class: 'quick'}, h('span', {class: 'muted'}, t('key.studydate')),
    ['today', 'yesterday', 'pastweek', 'pastmonth'].map((w) => h('button', {type: 'button',
      class: 'chip', 'aria-pressed': String(search.get('studydate') === w),
      onclick: () => { inputs.studydate.input.value = w; form.requestSubmit(); }}, t(`date.${w}`))));
  const more = h('details', {class: 'more', open: MORE_FIELDS.some(([k]) => search.has(k))},
    h('summary', {}, t('list.more_keys')), h('div', {class: 'grid'}, MORE_FIELDS.map(make)));
  const form = h('form', {class: 'filters', role: 'search'},
    h('div', {class: 'grid'}, MAIN_FIELDS.map(make)), more, quick,
    h('p', {class: 'hint'}, t('list.operators_help')),
    h('div', {class: 'form-actions'},
      h('button', {type: 'submit', class: 'primary'}, t('list.search')),
      h('button', {type: 'button', class: 'ghost', onclick: () => navigate('#/list')}, t('list.clear'))));
  form.addEventListener('submit', (e) => {
    e.preventDefault();
    const next = new URLSearchParams();
    for (const [key, {input, multi}] of Object.entries(inputs)) {
      const raw = input.value.trim();
      if (!raw) continue;
      const values = multi ? raw.split(',').map((v) => v.trim()).filter(Boolean) : [raw];
      for (const v of values) next.append(key, v);
    }
    // keys the form has no field for are kept (a HIS/RIS link may use them)
    for (const [k, v] of search) if (!(k in inputs)) next.append(k, v);
    if (sort) next.set('sort', sort);
    if (limit !== DEFAULT_LIMIT) next.set('limit', limit);
    navigate(hashUrl('list', next));
  });
  return form;
}

const POLL_MS = 30000;
const AUTO_KEY = 'pacsbox.autorefresh';

/**
 * New arrivals (SPEC E4 "appear live"): while this list is shown and the tab visible, the
 * dashboard's last arrival time is checked every 30 s; when it moves, a button offers the
 * refreshed list, or the list refreshes itself when "auto-refresh" is ticked.
 */
function liveArrivals({isCurrent, refresh}) {
  const auto = h('input', {type: 'checkbox', checked: localStorage.getItem(AUTO_KEY) === '1',
    onchange: (e) => localStorage.setItem(AUTO_KEY, e.target.checked ? '1' : '0')});
  const banner = h('button', {type: 'button', class: 'chip new-arrivals', hidden: true, onclick: refresh},
    t('list.new_arrivals'));
  const every = Number(window.pacsboxPollMs) || POLL_MS; // tests shorten it
  let lastArrival = null;
  const check = async () => {
    if (!isCurrent()) return;
    if (document.visibilityState === 'visible') {
      try {
        const d = await api('/api/dashboard');
        if (lastArrival !== null && d.last_arrival && d.last_arrival !== lastArrival) {
          lastArrival = d.last_arrival;
          if (auto.checked) { refresh(); return; }
          banner.hidden = false;
        }
        lastArrival = d.last_arrival || lastArrival || '';
      } catch {
        // the next round tries again
      }
    }
    setTimeout(check, every);
  };
  check();
  return h('span', {class: 'live'}, banner,
    h('label', {class: 'check small muted'}, auto, ' ', t('list.auto_refresh')));
}
