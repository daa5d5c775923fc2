// Study actions by privilege (issue 6 item 4): viewer, zip download, forward, share, delete.
// Buttons the user may not use are not shown (the server refuses them anyway).
import {api, download} from '../api.js';
import {field, fmtDateTime, fmtName, h} from '../dom.js';
import {t} from '../i18n.js';
import {icon} from '../icons.js';
import {confirmDialog, dialog, progressBar, toast} from '../widgets.js';

export function viewerUrl(uids) {
  return `/viewer/ohif/viewer?StudyInstanceUIDs=${[].concat(uids).map(encodeURIComponent).join(',')}`;
}

export function studyActions(study, {can, compact = false, onDeleted} = {}) {
  const uid = study.study_instance_uid;
  const label = `${fmtName(study.patient_name)} ${study.accession_number || ''}`.trim();
  const cls = compact ? 'icon-btn' : 'ghost';
  const items = [];
  const btn = (key, onclick, extra = '') => {
    const action = key.split('.')[1];
    return h('button', {type: 'button', class: `${cls} ${extra}`, title: t(key),
      'aria-label': `${t(key)}: ${label}`, dataset: {action}, onclick},
    compact ? icon(action) : [icon(action), t(key)]);
  };
  if (can('view')) {
    items.push(h('a', {class: `${cls} button`, href: viewerUrl(uid), title: t('action.view'),
      'aria-label': `${t('action.view')}: ${label}`, dataset: {action: 'view'}},
    compact ? icon('view') : [icon('view'), t('action.view')]));
  }
  if (can('export')) items.push(btn('action.download', () => downloadStudy(study)));
  if (can('forward')) items.push(btn('action.forward', () => forwardStudy(study)));
  if (can('share')) items.push(btn('action.share', () => shareStudy(study)));
  if (can('delete')) {
    items.push(btn('action.delete', async () => {
      if (await deleteStudy(study) && onDeleted) onDeleted();
    }, 'danger'));
  }
  return h('div', {class: 'action-bar'}, items);
}

export async function downloadStudy(study) {
  const uid = study.study_instance_uid;
  const url = `/api/studies/${encodeURIComponent(uid)}/archive`;
  let size = Number(study.size_bytes) || 0;
  if (!size) {
    try {
      size = Number((await api(`/api/studies/${encodeURIComponent(uid)}`)).size_bytes) || 0;
    } catch {
      // unknown size: download with the progress in bytes
    }
  }
  if (size > 512 * 1024 * 1024) {
    window.location.assign(url); // very large: let the browser stream it to disk
    return;
  }
  const progress = progressBar(t('action.downloading'));
  const note = toast('', 'info');
  note.replaceChildren(progress.el);
  try {
    const got = await download(url, `${(study.patient_id || 'study').replace(/[^\w.-]/g, '_')}-${uid}.zip`,
      (done, total) => progress.update(done, total || size,
        `${t('action.downloading')} ${(done / 1048576).toFixed(1)} MB`));
    progress.update(got, got, t('action.downloaded', {mb: (got / 1048576).toFixed(1)}));
  } catch (err) {
    note.remove();
    toast(err.message, 'error');
  }
}

export async function forwardStudy(study) {
  let aes;
  try {
    aes = (await api('/api/aes')).filter((a) => a.enabled && a.is_destination);
  } catch (err) {
    toast(err.message, 'error');
    return null;
  }
  if (!aes.length) {
    toast(t('forward.no_destinations'), 'error');
    return null;
  }
  const select = h('select', {name: 'ae_title', required: true},
    aes.map((a) => h('option', {value: a.ae_title}, `${a.ae_title} — ${a.host}:${a.port}${a.description ? ` (${a.description})` : ''}`)));
  const progress = progressBar(t('forward.sending'));
  progress.el.hidden = true;
  const result = await dialog({
    title: t('forward.title'),
    okLabel: t('action.forward'),
    build: () => [h('p', {}, `${fmtName(study.patient_name)} — ${study.study_description || ''}`),
      field(t('forward.destination'), select), progress.el],
    submit: async () => {
      progress.el.hidden = false;
      progress.update(0, 0);
      try {
        return await api(`/api/studies/${encodeURIComponent(study.study_instance_uid)}/forward`,
          {method: 'POST', body: {ae_title: select.value}});
      } finally {
        progress.el.hidden = true;
      }
    },
  });
  if (result) {
    const text = t('forward.result', {ae: select.value, sent: result.sent ?? 0,
      failed: result.failed ?? 0, warnings: result.warnings ?? 0});
    toast(text + (result.errors && result.errors.length ? ` — ${result.errors.slice(0, 3).join('; ')}` : ''),
      result.failed ? 'error' : 'ok');
  }
  return result;
}

export async function deleteStudy(study) {
  const ok = await confirmDialog(t('delete.title'),
    t('delete.confirm', {name: fmtName(study.patient_name) || study.patient_id || '',
      date: study.study_date || '', n: study.num_instances ?? '?'}), t('action.delete'));
  if (!ok) return false;
  try {
    await api(`/api/studies/${encodeURIComponent(study.study_instance_uid)}`, {method: 'DELETE'});
    toast(t('delete.done'), 'ok');
    return true;
  } catch (err) {
    toast(err.message, 'error');
    return false;
  }
}

/** The absolute link of a share (the API may answer a relative one). */
export function shareLink(share) {
  const url = share.url || `/share/${share.token}`;
  return new URL(url, window.location.origin).href;
}

export function copyButton(text) {
  return h('button', {type: 'button', class: 'ghost small', onclick: async (e) => {
    try {
      await navigator.clipboard.writeText(text);
      e.target.textContent = t('common.copied');
    } catch {
      window.prompt(t('common.copy'), text);
    }
  }}, t('common.copy'));
}

export async function shareStudy(study, onCreated) {
  const validity = h('select', {name: 'validity'},
    [['d7', 'share.days7'], ['d30', 'share.days30'], ['m2', 'share.months2'], ['m12', 'share.year'],
      ['until', 'share.until']].map(([v, k]) => h('option', {value: v}, t(k))));
  const until = h('input', {type: 'date', name: 'until', disabled: true});
  validity.addEventListener('change', () => { until.disabled = validity.value !== 'until'; until.required = !until.disabled; });
  const share = await dialog({
    title: t('share.title'),
    okLabel: t('share.create'),
    build: () => [h('p', {}, `${fmtName(study.patient_name)} — ${study.study_description || ''}`),
      field(t('share.validity'), validity), field(t('share.until_date'), until)],
    submit: () => api(`/api/studies/${encodeURIComponent(study.study_instance_uid)}/shares`, {method: 'POST',
      body: validity.value === 'until' ? {until: until.value}
        : validity.value.startsWith('m') ? {valid_months: Number(validity.value.slice(1))}
          : {valid_days: Number(validity.value.slice(1))}}),
  });
  if (!share) return null;
  const link = shareLink(share);
  await dialog({
    title: t('share.created'),
    info: true,
    build: () => [h('p', {}, t('share.expires', {at: fmtDateTime(share.expires_at)})),
      h('p', {class: 'muted small'}, t('share.once')),
      h('div', {class: 'share-link'}, h('input', {readonly: true, value: link, class: 'mono', 'aria-label': t('share.link')}),
        copyButton(link))],
  });
  if (onCreated) onCreated(share);
  const section = document.getElementById('shares');
  if (section) section.dispatchEvent(new Event('pacsbox:shared'));
  return share;
}
