// Settings (issue 6 item 5): GET /api/settings (secrets masked). Keys listed by
// GET /api/settings/runtime are editable (PATCH /api/settings); the others need a restart and
// are read-only here; keys pinned by a PACSBOX_* environment variable too.
import {api} from '../api.js';
import {h} from '../dom.js';
import {t} from '../i18n.js';
import {badge, errorBox, toast} from '../widgets.js';

function show(value) {
  if (value === null || value === undefined) return '';
  if (typeof value === 'object') return JSON.stringify(value);
  return String(value);
}

function editor(key, value) {
  if (typeof value === 'boolean') return h('input', {type: 'checkbox', name: key, checked: value, 'aria-label': key});
  if (typeof value === 'number') return h('input', {type: 'number', name: key, value, step: Number.isInteger(value) ? 1 : 'any', 'aria-label': key});
  if (Array.isArray(value) || (value && typeof value === 'object')) {
    return h('input', {name: key, value: JSON.stringify(value), class: 'mono', 'aria-label': key, dataset: {json: '1'}});
  }
  return h('input', {name: key, value: value ?? '', 'aria-label': key});
}

function read(input, original) {
  if (input.type === 'checkbox') return input.checked;
  if (input.type === 'number') return input.value === '' ? null : Number(input.value);
  if (input.dataset.json) return JSON.parse(input.value);
  if (original === null && input.value === '') return null;
  return input.value;
}

export async function render({el}) {
  const [settings, runtime] = await Promise.all([api('/api/settings'), api('/api/settings/runtime')]);
  const editable = new Set(runtime.runtime_keys.filter((k) => !runtime.pinned_by_environment.includes(k)));
  const inputs = {};
  const msg = h('div', {class: 'msg'});
  const rows = Object.keys(settings).sort().map((key) => {
    const value = settings[key];
    let cell;
    let note;
    if (editable.has(key)) {
      cell = inputs[key] = editor(key, value);
      note = badge(t('settings.runtime'), 'ok');
    } else {
      cell = h('span', {class: 'mono'}, show(value));
      note = runtime.pinned_by_environment.includes(key) ? badge(t('settings.pinned'), 'warn') : h('span', {class: 'muted small'}, t('settings.restart'));
    }
    return h('tr', {dataset: {key}}, h('th', {scope: 'row', class: 'mono'}, key), h('td', {}, cell), h('td', {}, note));
  });
  const form = h('form', {class: 'settings'},
    h('div', {class: 'table-wrap'}, h('table', {}, h('thead', {}, h('tr', {}, [t('settings.key'), t('settings.value'), ''].map((x) => h('th', {scope: 'col'}, x)))), h('tbody', {}, rows))),
    msg, h('div', {class: 'form-actions sticky'}, h('button', {type: 'submit', class: 'primary'}, t('common.save'))));
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    msg.replaceChildren();
    const changes = {};
    try {
      for (const [key, input] of Object.entries(inputs)) {
        const v = read(input, settings[key]);
        if (JSON.stringify(v) !== JSON.stringify(settings[key])) changes[key] = v;
      }
    } catch (err) {
      msg.append(errorBox(err));
      return;
    }
    if (!Object.keys(changes).length) {
      toast(t('settings.nothing'), 'info');
      return;
    }
    try {
      const r = await api('/api/settings', {method: 'PATCH', body: changes});
      Object.assign(settings, r.settings);
      toast(t('settings.saved', {keys: Object.keys(r.changed).join(', ')}), 'ok');
    } catch (err) {
      msg.append(errorBox(err));
    }
  });
  el.append(h('h1', {}, t('nav.settings')),
    h('p', {class: 'muted'}, t('settings.help', {file: runtime.config_file || '—'})), form);
}
