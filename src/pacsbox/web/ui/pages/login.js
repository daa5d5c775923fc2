// Login form (SPEC E3): POST /api/login; then the forced password change or the next page.
import {api} from '../api.js';
import {loggedIn} from '../app.js';
import {field, h, hashUrl} from '../dom.js';
import {t} from '../i18n.js';
import {errorBox} from '../widgets.js';

export async function render({el, params, navigate, session}) {
  const next = params.get('next') || '#/list';
  if (session.me && !session.me.user.must_change_password && !params.has('again')) {
    navigate(next.startsWith('#/login') ? '#/list' : next, {replace: true});
    return;
  }
  const user = h('input', {name: 'username', autocomplete: 'username', required: true, autofocus: true});
  const pass = h('input', {name: 'password', type: 'password', autocomplete: 'current-password', required: true});
  const msg = h('div', {class: 'msg'});
  const button = h('button', {type: 'submit', class: 'primary'}, t('login.submit'));
  const form = h('form', {class: 'card login', 'aria-labelledby': 'login-h'},
    h('h1', {id: 'login-h'}, t('login.title')),
    session.config.institution_name ? h('p', {class: 'muted'}, session.config.institution_name) : null,
    field(t('login.username'), user), field(t('login.password'), pass), msg, button);
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    button.disabled = true;
    msg.replaceChildren();
    try {
      const body = await api('/api/login', {method: 'POST', body: {username: user.value, password: pass.value}});
      loggedIn(body);
      if (body.user.must_change_password) navigate(hashUrl('password', {next}));
      else navigate(next.startsWith('#/login') ? '#/list' : next);
    } catch (err) {
      msg.replaceChildren(errorBox(err));
      pass.select();
    } finally {
      button.disabled = false;
    }
  });
  el.append(form);
  user.focus();
}
