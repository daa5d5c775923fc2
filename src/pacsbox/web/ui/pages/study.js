// One study: details, actions, series with thumbnails (WADO-RS thumbnail, PS3.18 §9.7),
// and — for users with `share` — its share links (SPEC E7).
import {api} from '../api.js';
import {fmtBytes, fmtDate, fmtDateTime, fmtList, fmtName, fmtTime, h, hashUrl} from '../dom.js';
import {t} from '../i18n.js';
import {badge, errorBox, table, toast} from '../widgets.js';
import {studyActions} from './actions.js';

export function breadcrumbs(...items) {
  return h('nav', {class: 'crumbs', 'aria-label': t('common.breadcrumbs')},
    h('a', {href: '#/list'}, t('nav.list')), items.map(([label, href]) => [' › ', href ? h('a', {href}, label) : h('span', {}, label)]));
}

export function details(pairs) {
  return h('dl', {class: 'details'}, pairs.filter(([, v]) => v !== undefined && v !== null && v !== '')
    .map(([k, v]) => [h('dt', {}, k), h('dd', {}, v)]));
}

export async function render({el, params, navigate, can}) {
  const uid = params.get('uid') || '';
  const enc = encodeURIComponent(uid);
  const [study, series] = await Promise.all([api(`/api/studies/${enc}`), api(`/api/studies/${enc}/series`)]);
  const patientHref = hashUrl('patient', {patientid: study.patient_id, issuer: study.issuer_of_patient_id || ''});
  el.append(
    breadcrumbs([fmtName(study.patient_name) || study.patient_id, patientHref], [study.study_description || t('study.title')]),
    h('h1', {}, study.study_description || t('study.title')),
    studyActions(study, {can, onDeleted: () => navigate('#/list')}),
    details([
      [t('col.patient_name'), h('a', {href: patientHref}, fmtName(study.patient_name))],
      [t('col.patient_id'), study.patient_id],
      [t('col.birth_date'), fmtDate(study.patient_birth_date)],
      [t('col.sex'), study.patient_sex],
      [t('col.study_date'), `${fmtDate(study.study_date)} ${fmtTime(study.study_time)}`],
      [t('col.accession'), study.accession_number],
      [t('key.studyid'), study.study_id],
      [t('col.modalities'), fmtList(study.modalities_in_study)],
      [t('key.referringphysicianname'), fmtName(study.referring_physician_name)],
      [t('key.institutionname'), study.institution_name],
      [t('col.counts'), `${study.num_series} / ${study.num_instances}`],
      [t('study.size'), fmtBytes(study.size_bytes)],
      [t('col.source_ae'), study.source_ae],
      [t('col.received'), fmtDateTime(study.received_at)],
      [t('key.studyinstanceuid'), h('span', {class: 'mono'}, study.study_instance_uid)],
    ]));
  el.append(h('h2', {}, t('study.series', {n: series.length})),
    h('ul', {class: 'series-grid'}, series.map((s) => {
      const href = hashUrl('series', {study: uid, uid: s.series_instance_uid});
      return h('li', {class: 'series-card'}, h('a', {href},
        h('img', {src: `/dicom-web/studies/${enc}/series/${encodeURIComponent(s.series_instance_uid)}/thumbnail`,
          alt: '', loading: 'lazy', width: 128, height: 128,
          onerror: (e) => { e.target.classList.add('no-image'); e.target.removeAttribute('src'); }}),
        h('span', {class: 'series-title'}, `${s.modality || ''} #${s.series_number ?? ''}`),
        h('span', {class: 'muted'}, s.series_description || ''),
        h('span', {class: 'muted small'}, t('series.images', {n: s.num_instances}))));
    })));
  if (can('share')) el.append(await sharesSection(uid));
}

async function sharesSection(uid) {
  const box = h('section', {class: 'shares', id: 'shares'});
  const fill = async () => {
    box.replaceChildren(h('h2', {}, t('share.list_title')));
    try {
      box.append(sharesTable(await api('/api/shares', {query: {study_uid: uid}}), fill));
    } catch (err) {
      box.append(errorBox(err));
    }
  };
  await fill();
  box.addEventListener('pacsbox:shared', fill);
  return box;
}

export function sharesTable(shares, onRevoked) {
  return table([
    {label: t('share.study'), value: (s) => h('a', {href: hashUrl('study', {uid: s.study_instance_uid})},
      [fmtName(s.patient_name) || s.patient_id || s.study_instance_uid, s.study_date ? ` (${fmtDate(s.study_date)})` : ''].join(''))},
    {label: t('col.description'), value: (s) => s.study_description || ''},
    {label: t('share.created_by'), value: (s) => s.created_by || ''},
    {label: t('share.created_at'), class: 'nowrap', value: (s) => fmtDateTime(s.created_at)},
    {label: t('share.expires_at'), class: 'nowrap', value: (s) => fmtDateTime(s.expires_at)},
    {label: t('share.accesses'), class: 'num', value: (s) => String(s.access_count ?? 0)},
    {label: t('share.state'), value: (s) => s.revoked_at ? badge(t('share.revoked'), 'bad') : s.active ? badge(t('share.active'), 'ok') : badge(t('share.expired'), 'warn')},
    {label: '', class: 'actions', value: (s) => s.revoked_at ? '' : h('button', {type: 'button', class: 'ghost danger small', dataset: {action: 'revoke'}, onclick: async () => {
      try {
        await api(`/api/shares/${encodeURIComponent(s.id)}`, {method: 'DELETE'});
        toast(t('share.revoked'), 'ok');
        if (onRevoked) onRevoked(s);
      } catch (err) {
        toast(err.message, 'error');
      }
    }}, t('share.revoke'))},
  ], shares, {empty: t('share.none')});
}
