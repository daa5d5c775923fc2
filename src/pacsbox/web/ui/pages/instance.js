// One instance: preview (rendered image, SR report or PDF) and the tag dump from the
// WADO-RS metadata (DICOM JSON model, PS3.18 Annex F).
import {api} from '../api.js';
import {fmtName, h, hashUrl} from '../dom.js';
import {t} from '../i18n.js';
import {breadcrumbs} from './study.js';
import {isPdf, isStructuredReport, sopClassName} from './sopclass.js';

let dictionary = null;

async function tagNames() {
  if (!dictionary) {
    const r = await fetch('/ui/dicom-dict.json', {credentials: 'same-origin'});
    dictionary = r.ok ? await r.json() : {};
  }
  return dictionary;
}

function fmtTag(tag) {
  return `(${tag.slice(0, 4)},${tag.slice(4)})`;
}

function valueText(element) {
  if (element.BulkDataURI) return t('instance.bulkdata');
  if (element.InlineBinary) return t('instance.binary', {n: Math.floor(element.InlineBinary.length * 3 / 4)});
  if (!element.Value) return '';
  return element.Value.map((v) => (element.vr === 'PN' ? (v && v.Alphabetic) || '' : typeof v === 'object' ? JSON.stringify(v) : String(v))).join('\\');
}

/** Rows for a data set; sequences expand with their items indented. */
function dumpRows(dataset, names, depth = 0, rows = []) {
  for (const tag of Object.keys(dataset).sort()) {
    const element = dataset[tag];
    const name = names[tag] || (Number.parseInt(tag.slice(0, 4), 16) % 2 ? t('instance.private') : '');
    const value = element.vr === 'SQ' ? t('instance.items', {n: (element.Value || []).length}) : valueText(element);
    rows.push(h('tr', {class: `depth-${Math.min(depth, 4)}`},
      h('td', {class: 'mono nowrap'}, `${'  '.repeat(depth)}${fmtTag(tag)}`),
      h('td', {}, name), h('td', {class: 'mono'}, element.vr || ''),
      h('td', {class: 'value'}, value.length > 400 ? `${value.slice(0, 400)}…` : value)));
    if (element.vr === 'SQ') {
      (element.Value || []).forEach((item, i) => {
        rows.push(h('tr', {class: `item depth-${Math.min(depth + 1, 4)}`}, h('td', {colspan: 4, class: 'muted'}, `${'  '.repeat(depth + 1)}${t('instance.item', {n: i + 1})}`)));
        dumpRows(item, names, depth + 1, rows);
      });
    }
  }
  return rows;
}

export async function render({el, params}) {
  const study = params.get('study') || '';
  const series = params.get('series') || '';
  const sop = params.get('uid') || '';
  const base = `/dicom-web/studies/${encodeURIComponent(study)}/series/${encodeURIComponent(series)}/instances/${encodeURIComponent(sop)}`;
  const [meta, names, info] = await Promise.all([
    api(`${base}/metadata`, {accept: 'application/dicom+json'}), tagNames(),
    api(`/api/instances/${encodeURIComponent(sop)}`)]);
  const dataset = meta[0] || {};
  const patient = dataset['00100010'] ? fmtName(dataset['00100010'].Value?.[0]) : '';
  const patientId = dataset['00100020']?.Value?.[0] || '';
  el.append(breadcrumbs([patient || patientId || t('patient.title'), patientId ? hashUrl('patient', {patientid: patientId}) : null],
    [t('study.title'), hashUrl('study', {uid: study})],
    [t('series.title'), hashUrl('series', {study, uid: series})], [`#${info.instance_number ?? ''}`]),
  h('h1', {}, `${sopClassName(info.sop_class_uid)} #${info.instance_number ?? ''}`));
  const cls = info.sop_class_uid;
  if (isStructuredReport(cls) || isPdf(cls)) {
    const src = `/api/instances/${encodeURIComponent(sop)}/${isPdf(cls) ? 'document' : 'report'}`;
    el.append(h('div', {class: 'doc-frame'}, h('p', {}, h('a', {href: src, target: '_blank', rel: 'noopener'}, t('instance.open_new'))),
      h('iframe', {src, title: isPdf(cls) ? t('instance.pdf') : t('instance.report'), class: isPdf(cls) ? 'pdf' : 'report'})));
  } else if (info.rows) {
    el.append(h('figure', {class: 'preview'}, h('img', {src: `${base}/rendered`, alt: t('instance.preview'), loading: 'lazy'})));
  }
  const filter = h('input', {type: 'search', placeholder: t('instance.filter'), 'aria-label': t('instance.filter')});
  const body = h('tbody', {}, dumpRows(dataset, names));
  filter.addEventListener('input', () => {
    const q = filter.value.trim().toLowerCase();
    for (const tr of body.rows) tr.hidden = Boolean(q) && !tr.textContent.toLowerCase().includes(q);
  });
  el.append(h('h2', {}, t('instance.tags')), filter,
    h('div', {class: 'table-wrap'}, h('table', {class: 'tag-dump'},
      h('thead', {}, h('tr', {}, [t('instance.tag'), t('instance.name'), 'VR', t('instance.value')].map((x) => h('th', {scope: 'col'}, x)))), body)));
}
