// A patient and its studies: GET /api/patients/{id} then the study list API for the rows.
import {api} from '../api.js';
import {fmtDate, fmtList, fmtName, h, hashUrl} from '../dom.js';
import {t} from '../i18n.js';
import {confirmDialog, table, toast} from '../widgets.js';
import {icon} from '../icons.js';
import {breadcrumbs, details} from './study.js';

export async function render({el, params, navigate, can}) {
  const id = params.get('patientid') || '';
  const issuer = params.get('issuer') || '';
  const info = await api(`/api/patients/${encodeURIComponent(id)}`, {query: issuer ? {issuer} : undefined});
  const p = info.patients[0] || {};
  el.append(breadcrumbs([fmtName(p.patient_name) || id]),
    h('h1', {}, fmtName(p.patient_name) || id),
    details([[t('col.patient_id'), p.patient_id], [t('key.issuer'), p.issuer_of_patient_id],
      [t('col.birth_date'), fmtDate(p.patient_birth_date)], [t('col.sex'), p.patient_sex],
      [t('patient.counts'), `${p.num_studies ?? ''} / ${p.num_series ?? ''} / ${p.num_instances ?? ''}`]]));
  if (can('delete')) {
    el.append(h('div', {class: 'action-bar'}, h('button', {type: 'button', class: 'ghost danger', dataset: {action: 'delete'}, onclick: async () => {
      const ok = await confirmDialog(t('delete.patient_title'), t('delete.patient_confirm',
        {name: fmtName(p.patient_name) || id, n: info.studies.length}), t('action.delete'));
      if (!ok) return;
      try {
        await api(`/api/patients/${encodeURIComponent(id)}`, {method: 'DELETE', query: issuer ? {issuer} : undefined});
        toast(t('delete.done_patient'), 'ok');
        navigate('#/list');
      } catch (err) {
        toast(err.message, 'error');
      }
    }}, icon('delete'), t('action.delete'))));
  }
  const studies = await Promise.all(info.studies.slice(0, 200).map((uid) => api(`/api/studies/${encodeURIComponent(uid)}`)));
  studies.sort((a, b) => `${b.study_date}${b.study_time}`.localeCompare(`${a.study_date}${a.study_time}`));
  el.append(h('h2', {}, t('patient.studies', {n: info.studies.length})), table([
    {label: t('col.study_date'), value: (s) => fmtDate(s.study_date)},
    {label: t('col.modalities'), value: (s) => fmtList(s.modalities_in_study)},
    {label: t('col.description'), value: (s) => s.study_description || ''},
    {label: t('col.accession'), value: (s) => s.accession_number || ''},
    {label: t('col.counts'), class: 'num', value: (s) => `${s.num_series} / ${s.num_instances}`},
  ], studies, {onRow: (s) => navigate(hashUrl('study', {uid: s.study_instance_uid}))}));
}
