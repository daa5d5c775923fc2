// Change one's own password (forced for the default admin: SPEC E3). POST /api/me/password.
import {api} from '../api.js';
import {renderChrome} from '../app.js';
import {field, fmtDateTime, h} from '../dom.js';
import {t} from '../i18n.js';
import {badge, dialog, errorBox, table, toast} from '../widgets.js';
import {copyButton} from './actions.js';

export async function render({el, params, navigate, session}) {
  const forced = session.me.user.must_change_password;
  const current = h('input', {name: 'current', type: 'password', autocomplete: 'current-password', required: true});
  const fresh = h('input', {name: 'new', type: 'password', autocomplete: 'new-password', required: true, minlength: 8});
  const again = h('input', {name: 'again', type: 'password', autocomplete: 'new-password', required: true, minlength: 8});
  const msg = h('div', {class: 'msg'});
  const form = h('form', {class: 'card login'},
    h('h1', {}, t('password.title')),
    forced ? h('p', {class: 'notice'}, t('password.forced')) : null,
    field(t('password.current'), current), field(t('password.new'), fresh, t('password.rule')),
    field(t('password.again'), again), msg,
    h('button', {type: 'submit', class: 'primary'}, t('password.submit')));
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    msg.replaceChildren();
    if (fresh.value !== again.value) {
      msg.append(errorBox(t('password.mismatch')));
      return;
    }
    try {
      const body = await api('/api/me/password', {method: 'POST',
        body: {current_password: current.value, new_password: fresh.value}});
      session.me.user = body.user;
      renderChrome();
      toast(t('password.changed'), 'ok');
      const next = params.get('next');
      navigate(next && !next.startsWith('#/password') && !next.startsWith('#/login') ? next : '#/list');
    } catch (err) {
      msg.append(errorBox(err));
    }
  });
  el.append(form);
  if (!forced) el.append(await tokensSection());
  current.focus();
}

/** One's own API tokens (Authorization: Bearer): list, create (shown once), revoke. */
async function tokensSection() {
  const box = h('section', {class: 'tokens', id: 'tokens'});
  const fill = async () => {
    const tokens = await api('/api/tokens');
    const name = h('input', {name: 'token_name', maxlength: 128, placeholder: t('token.name_hint'), 'aria-label': t('token.name')});
    const days = h('select', {name: 'token_days', 'aria-label': t('token.expires')},
      [['30', 'token.days30'], ['365', 'token.year'], ['', 'token.never']].map(([v, k]) => h('option', {value: v}, t(k))));
    const create = h('form', {class: 'inline-form'}, name, days, h('button', {type: 'submit', class: 'ghost'}, t('token.create')));
    create.addEventListener('submit', async (e) => {
      e.preventDefault();
      try {
        const made = await api('/api/tokens', {method: 'POST',
          body: {name: name.value, expires_days: days.value ? Number(days.value) : null}});
        await dialog({title: t('token.created'), info: true, build: () => [
          h('p', {class: 'muted small'}, t('token.once')),
          h('div', {class: 'share-link'}, h('input', {readonly: true, value: made.token, class: 'mono', 'aria-label': t('token.name')}), copyButton(made.token))]});
        fill();
      } catch (err) {
        toast(err.message, 'error');
      }
    });
    box.replaceChildren(h('h2', {}, t('token.title')), h('p', {class: 'muted'}, t('token.help')), create, table([
      {label: t('token.name'), value: (k) => k.name || ''},
      {label: t('token.prefix'), value: (k) => h('span', {class: 'mono'}, `${k.prefix}…`)},
      {label: t('share.created_at'), value: (k) => fmtDateTime(k.created_at)},
      {label: t('token.last_used'), value: (k) => fmtDateTime(k.last_used_at)},
      {label: t('token.expires'), value: (k) => fmtDateTime(k.expires_at) || t('token.never')},
      {label: t('share.state'), value: (k) => (k.active ? badge(t('share.active'), 'ok') : badge(t('share.revoked'), 'bad'))},
      {label: '', class: 'actions', value: (k) => (k.active ? h('button', {type: 'button', class: 'ghost small danger', onclick: async () => {
        try {
          await api(`/api/tokens/${encodeURIComponent(k.id)}`, {method: 'DELETE'});
          fill();
        } catch (err) {
          toast(err.message, 'error');
        }
      }}, t('share.revoke')) : '')},
    ], tokens, {empty: t('token.none')}));
  };
  try {
    await fill();
  } catch (err) {
    box.replaceChildren(errorBox(err));
  }
  return box;
}
