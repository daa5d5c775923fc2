// Change one's own password (forced for the default admin: SPEC E3). POST /api/me/password.
import {api} from '../api.js';
import {renderChrome} from '../app.js';
import {field, h} from '../dom.js';
import {t} from '../i18n.js';
import {errorBox, toast} from '../widgets.js';

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
  current.focus();
}
