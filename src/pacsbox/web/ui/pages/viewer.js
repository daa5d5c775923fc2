// #/viewer?studyinstanceuid=…|accessionnumber=…|patientid=…|seriesinstanceuid=…|sopinstanceuid=…
// (SPEC E5, E6): resolve the studies through the study list API, then open the viewer with
// all of them (OHIF under /viewer/ohif/).
import {api} from '../api.js';
import {h, hashUrl} from '../dom.js';
import {t} from '../i18n.js';
import {viewerUrl} from './actions.js';

const UID_RE = /^[0-9.]{1,64}$/;

export async function render({el, params}) {
  const direct = params.getAll('studyinstanceuid').flatMap((v) => v.split(',')).map((v) => v.trim());
  let uids = [];
  if (direct.length && direct.every((u) => UID_RE.test(u)) && [...params.keys()].every((k) => k === 'studyinstanceuid')) {
    uids = direct;
  } else {
    const query = new URLSearchParams(params);
    query.set('limit', '50');
    const answer = await api('/api/studylist', {query});
    uids = answer.items.map((s) => s.study_instance_uid);
  }
  if (!uids.length) {
    el.append(h('h1', {}, t('viewer.title')), h('p', {class: 'notice'}, t('viewer.none')),
      h('p', {}, h('a', {href: hashUrl('list', params)}, t('viewer.to_list'))));
    return;
  }
  el.append(h('p', {class: 'loading'}, t('viewer.opening', {n: uids.length})));
  window.location.replace(viewerUrl(uids));
}
