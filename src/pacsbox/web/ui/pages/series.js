// One series: its instances (GET /api/series/{uid}/instances) with thumbnails.
import {api} from '../api.js';
import {fmtBytes, fmtName, h, hashUrl} from '../dom.js';
import {t} from '../i18n.js';
import {icon} from '../icons.js';
import {confirmDialog, table, toast} from '../widgets.js';
import {viewerUrl} from './actions.js';
import {breadcrumbs, details} from './study.js';
import {sopClassName} from './sopclass.js';

export async function render({el, params, navigate, can}) {
  const uid = params.get('uid') || '';
  const [series, instances] = await Promise.all([api(`/api/series/${encodeURIComponent(uid)}`),
    api(`/api/series/${encodeURIComponent(uid)}/instances`)]);
  const studyUid = series.study_instance_uid;
  const study = await api(`/api/studies/${encodeURIComponent(studyUid)}`);
  const base = `/dicom-web/studies/${encodeURIComponent(studyUid)}/series/${encodeURIComponent(uid)}`;
  el.append(breadcrumbs([fmtName(study.patient_name) || study.patient_id, hashUrl('patient', {patientid: study.patient_id})],
    [study.study_description || t('study.title'), hashUrl('study', {uid: studyUid})],
    [`${series.modality || ''} #${series.series_number ?? ''}`]),
  h('h1', {}, series.series_description || `${t('series.title')} ${series.series_number ?? ''}`),
  h('div', {class: 'action-bar'},
    can('view') ? h('a', {class: 'ghost button', href: viewerUrl(studyUid), dataset: {action: 'view'}}, icon('view'), t('action.view')) : null,
    can('delete') ? h('button', {type: 'button', class: 'ghost danger', dataset: {action: 'delete'}, onclick: async () => {
      const ok = await confirmDialog(t('delete.series_title'), t('delete.series_confirm', {n: series.num_instances ?? instances.length}), t('action.delete'));
      if (!ok) return;
      try {
        await api(`/api/series/${encodeURIComponent(uid)}`, {method: 'DELETE'});
        toast(t('delete.done_series'), 'ok');
        navigate(hashUrl('study', {uid: studyUid}));
      } catch (err) {
        toast(err.message, 'error');
      }
    }}, icon('delete'), t('action.delete')) : null),
  details([[t('key.modality'), series.modality], [t('key.seriesnumber'), series.series_number],
    [t('key.bodypartexamined'), series.body_part_examined], [t('series.images_label'), series.num_instances],
    [t('key.seriesinstanceuid'), h('span', {class: 'mono'}, uid)]]),
  table([
    {label: '', class: 'thumb', value: (i) => i.rows ? h('img', {src: `${base}/instances/${encodeURIComponent(i.sop_instance_uid)}/thumbnail`,
      alt: '', loading: 'lazy', width: 64, height: 64, onerror: (e) => e.target.remove()}) : h('span', {class: 'doc-icon'}, icon('document'))},
    {label: t('instance.number'), class: 'num', value: (i) => i.instance_number ?? ''},
    {label: t('instance.sop_class'), value: (i) => sopClassName(i.sop_class_uid)},
    {label: t('instance.size_px'), value: (i) => i.rows ? `${i.columns}×${i.rows}` : ''},
    {label: t('instance.frames'), class: 'num', value: (i) => i.number_of_frames ?? ''},
    {label: t('instance.ts'), value: (i) => h('span', {class: 'mono small'}, i.transfer_syntax_uid || '')},
    {label: t('instance.file_size'), class: 'num', value: (i) => fmtBytes(i.file_size)},
  ], instances, {onRow: (i) => navigate(hashUrl('instance', {study: studyUid, series: uid, uid: i.sop_instance_uid}))}));
}
