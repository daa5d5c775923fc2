// Users and roles (SPEC E3): /api/users, /api/roles (admin).
import {api} from '../api.js';
import {field, fmtDateTime, h} from '../dom.js';
import {t} from '../i18n.js';
import {badge, confirmDialog, dialog, table, toast} from '../widgets.js';

export async function render({el, session, can}) {
  const [users, roles] = await Promise.all([api('/api/users'), api('/api/roles')]);
  const reload = async () => { el.replaceChildren(); await render({el, session, can}); };
  const roleSelect = (current) => h('select', {name: 'role', required: true},
    roles.map((r) => h('option', {value: r.name, selected: r.name === current}, r.name)));

  el.append(h('div', {class: 'page-head'}, h('h1', {}, t('nav.users')),
    h('button', {type: 'button', class: 'primary', onclick: async () => {
      const f = {username: h('input', {required: true, maxlength: 64, autocomplete: 'off'}), full_name: h('input', {maxlength: 128}),
        role: roleSelect('viewer'), password: h('input', {type: 'password', required: true, minlength: 8, autocomplete: 'new-password'}),
        must: h('input', {type: 'checkbox', checked: true})};
      const made = await dialog({title: t('user.add'), okLabel: t('common.save'),
        build: () => [field(t('user.username'), f.username), field(t('user.full_name'), f.full_name), field(t('user.role'), f.role),
          field(t('user.password'), f.password), h('label', {class: 'check'}, f.must, ' ', t('user.must_change'))],
        submit: () => api('/api/users', {method: 'POST', body: {username: f.username.value.trim(), full_name: f.full_name.value,
          role: f.role.value, password: f.password.value, must_change_password: f.must.checked}})});
      if (made) { toast(t('user.saved', {u: made.username}), 'ok'); reload(); }
    }}, `+ ${t('user.add')}`)));

  el.append(table([
    {label: t('user.username'), value: (u) => h('span', {class: 'mono'}, u.username)},
    {label: t('user.full_name'), value: (u) => u.full_name || ''},
    {label: t('user.role'), value: (u) => u.role},
    {label: t('user.state'), value: (u) => [u.enabled ? badge(t('user.enabled'), 'ok') : badge(t('user.disabled'), 'bad'),
      u.must_change_password ? badge(t('user.must_change_short'), 'warn') : null]},
    {label: t('user.last_login'), value: (u) => fmtDateTime(u.last_login_at)},
    {label: '', class: 'actions', value: (u) => h('div', {class: 'action-bar'},
      h('button', {type: 'button', class: 'ghost small', 'aria-label': `${t('common.edit')} ${u.username}`, onclick: async () => {
        const f = {full_name: h('input', {maxlength: 128, value: u.full_name || ''}), role: roleSelect(u.role),
          enabled: h('input', {type: 'checkbox', checked: u.enabled}),
          password: h('input', {type: 'password', minlength: 8, autocomplete: 'new-password'}),
          must: h('input', {type: 'checkbox', checked: true})};
        const saved = await dialog({title: t('user.edit', {u: u.username}), okLabel: t('common.save'),
          build: () => [field(t('user.full_name'), f.full_name), field(t('user.role'), f.role),
            h('label', {class: 'check'}, f.enabled, ' ', t('user.enabled')),
            field(t('user.new_password'), f.password, t('user.new_password_hint')),
            h('label', {class: 'check'}, f.must, ' ', t('user.must_change'))],
          submit: () => {
            const body = {full_name: f.full_name.value, role: f.role.value, enabled: f.enabled.checked};
            if (f.password.value) { body.password = f.password.value; body.must_change_password = f.must.checked; }
            return api(`/api/users/${encodeURIComponent(u.username)}`, {method: 'PATCH', body});
          }});
        if (saved) { toast(t('user.saved', {u: u.username}), 'ok'); reload(); }
      }}, t('common.edit')),
      u.username === session.me.user.username ? null : h('button', {type: 'button', class: 'ghost small danger',
        'aria-label': `${t('common.delete')} ${u.username}`, onclick: async () => {
          if (!await confirmDialog(t('user.delete_title'), t('user.delete_confirm', {u: u.username}), t('common.delete'))) return;
          try {
            await api(`/api/users/${encodeURIComponent(u.username)}`, {method: 'DELETE'});
            toast(t('user.deleted', {u: u.username}), 'ok');
            reload();
          } catch (err) { toast(err.message, 'error'); }
        }}, t('common.delete')))},
  ], users));

  const privileges = roles.find((r) => r.name === 'admin')?.privileges || [];
  el.append(h('div', {class: 'page-head'}, h('h2', {}, t('role.title')),
    h('button', {type: 'button', class: 'ghost', onclick: async () => {
      const name = h('input', {required: true, maxlength: 64});
      const description = h('input', {maxlength: 255});
      const boxes = privileges.map((p) => [p, h('input', {type: 'checkbox', value: p})]);
      const made = await dialog({title: t('role.add'), okLabel: t('common.save'),
        build: () => [field(t('role.name'), name), field(t('role.description'), description),
          h('fieldset', {class: 'checks'}, h('legend', {}, t('role.privileges')), boxes.map(([p, b]) => h('label', {class: 'check'}, b, ' ', t(`priv.${p}`))))],
        submit: () => api('/api/roles', {method: 'POST', body: {name: name.value.trim(), description: description.value,
          privileges: boxes.filter(([, b]) => b.checked).map(([p]) => p)}})});
      if (made) { toast(t('role.saved', {r: made.name}), 'ok'); reload(); }
    }}, `+ ${t('role.add')}`)));
  el.append(table([
    {label: t('role.name'), value: (r) => r.name},
    {label: t('role.privileges'), value: (r) => r.privileges.map((p) => badge(t(`priv.${p}`)))},
    {label: t('role.description'), value: (r) => r.description || ''},
    {label: '', class: 'actions', value: (r) => r.builtin ? h('span', {class: 'muted small'}, t('role.builtin')) : h('button', {type: 'button', class: 'ghost small danger', onclick: async () => {
      if (!await confirmDialog(t('role.delete_title'), t('role.delete_confirm', {r: r.name}), t('common.delete'))) return;
      try {
        await api(`/api/roles/${encodeURIComponent(r.name)}`, {method: 'DELETE'});
        reload();
      } catch (err) { toast(err.message, 'error'); }
    }}, t('common.delete'))},
  ], roles));
}
