// AE registry (SPEC E4 "AE page"): list, add, edit, delete (admin), Ping = C-ECHO
// (PS3.7 §9.1.5) through POST /api/aes/{title}/echo (privilege forward).
import {api} from '../api.js';
import {field, h} from '../dom.js';
import {t} from '../i18n.js';
import {badge, confirmDialog, dialog, table, toast} from '../widgets.js';

const FLAGS = ['enabled', 'allow_store', 'allow_query', 'allow_retrieve', 'is_destination', 'tls'];

function aeForm(entry) {
  const inputs = {
    ae_title: h('input', {name: 'ae_title', required: true, maxlength: 16, pattern: '[ -\\[\\]-~]{1,16}', value: entry ? entry.ae_title : '', disabled: Boolean(entry), class: 'mono'}),
    host: h('input', {name: 'host', required: true, maxlength: 255, value: entry ? entry.host : ''}),
    port: h('input', {name: 'port', type: 'number', min: 1, max: 65535, required: true, value: entry ? entry.port : 104}),
    description: h('input', {name: 'description', maxlength: 255, value: entry ? entry.description : ''}),
  };
  const flags = Object.fromEntries(FLAGS.map((f) => [f, h('input', {type: 'checkbox', name: f, checked: entry ? entry[f] : f !== 'tls'})]));
  const build = () => [field(t('ae.title'), inputs.ae_title), field(t('ae.host'), inputs.host),
    field(t('ae.port'), inputs.port), field(t('ae.description'), inputs.description),
    h('fieldset', {class: 'checks'}, h('legend', {}, t('ae.permissions')),
      FLAGS.map((f) => h('label', {class: 'check'}, flags[f], ' ', t(`ae.${f}`))))];
  const values = () => ({
    ...(entry ? {} : {ae_title: inputs.ae_title.value.trim()}),
    host: inputs.host.value.trim(), port: Number(inputs.port.value), description: inputs.description.value,
    ...Object.fromEntries(FLAGS.map((f) => [f, flags[f].checked])),
  });
  return {build, values};
}

export async function render({el, can}) {
  const admin = can('admin');
  const list = await api('/api/aes');
  const reload = async () => { el.replaceChildren(); await render({el, can}); };
  el.append(h('div', {class: 'page-head'}, h('h1', {}, t('nav.aes')),
    admin ? h('button', {type: 'button', class: 'primary', onclick: async () => {
      const form = aeForm(null);
      const made = await dialog({title: t('ae.add'), okLabel: t('common.save'), build: form.build,
        submit: () => api('/api/aes', {method: 'POST', body: form.values()})});
      if (made) { toast(t('ae.saved', {ae: made.ae_title}), 'ok'); reload(); }
    }}, `+ ${t('ae.add')}`) : null));
  const results = {};
  el.append(table([
    {label: t('ae.title'), value: (a) => h('span', {class: 'mono'}, a.ae_title)},
    {label: t('ae.address'), value: (a) => `${a.host}:${a.port}`},
    {label: t('ae.description'), value: (a) => a.description || ''},
    {label: t('ae.permissions'), value: (a) => FLAGS.filter((f) => a[f]).map((f) => badge(t(`ae.${f}`), f === 'enabled' ? 'ok' : ''))},
    {label: t('ae.ping_result'), value: (a) => (results[a.ae_title] = h('span', {class: 'ping-result', role: 'status', dataset: {ae: a.ae_title}}))},
    {label: '', class: 'actions', value: (a) => h('div', {class: 'action-bar'},
      can('forward') ? h('button', {type: 'button', class: 'ghost small', dataset: {action: 'ping'}, 'aria-label': `${t('ae.ping')} ${a.ae_title}`, onclick: async (e) => {
        const out = results[a.ae_title];
        e.target.disabled = true;
        out.className = 'ping-result pending';
        out.textContent = t('ae.pinging');
        const start = performance.now();
        try {
          const r = await api(`/api/aes/${encodeURIComponent(a.ae_title)}/echo`, {method: 'POST'});
          const ms = Math.round(performance.now() - start);
          out.className = `ping-result ${r.ok ? 'ok' : 'fail'}`;
          out.textContent = r.ok ? t('ae.ping_ok', {ms, status: r.status}) : t('ae.ping_fail', {message: r.message || r.status});
        } catch (err) {
          out.className = 'ping-result fail';
          out.textContent = err.message;
        } finally {
          e.target.disabled = false;
        }
      }}, t('ae.ping')) : null,
      admin ? h('button', {type: 'button', class: 'ghost small', dataset: {action: 'edit'}, 'aria-label': `${t('common.edit')} ${a.ae_title}`, onclick: async () => {
        const form = aeForm(a);
        const saved = await dialog({title: t('ae.edit', {ae: a.ae_title}), okLabel: t('common.save'), build: form.build,
          submit: () => api(`/api/aes/${encodeURIComponent(a.ae_title)}`, {method: 'PATCH', body: form.values()})});
        if (saved) { toast(t('ae.saved', {ae: a.ae_title}), 'ok'); reload(); }
      }}, t('common.edit')) : null,
      admin ? h('button', {type: 'button', class: 'ghost small danger', dataset: {action: 'delete'}, 'aria-label': `${t('common.delete')} ${a.ae_title}`, onclick: async () => {
        if (!await confirmDialog(t('ae.delete_title'), t('ae.delete_confirm', {ae: a.ae_title}), t('common.delete'))) return;
        try {
          await api(`/api/aes/${encodeURIComponent(a.ae_title)}`, {method: 'DELETE'});
          toast(t('ae.deleted', {ae: a.ae_title}), 'ok');
          reload();
        } catch (err) {
          toast(err.message, 'error');
        }
      }}, t('common.delete')) : null)},
  ], list, {empty: t('ae.none')}));
}
