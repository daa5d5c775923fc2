// The application shell: hash router over pages/registry.js, session, language, navigation,
// HIS/RIS URL login (SPEC E4, E6).
import {ApiError, api, setCsrf} from './api.js';
import {h, hashUrl} from './dom.js';
import {LANGUAGES, initLanguage, language, setLanguage, t, translateDom} from './i18n.js';
import {pages} from './pages/registry.js';
import {errorBox, loading, toast} from './widgets.js';

/** Shared state: the user (/api/me) and the public configuration (/api/ui-config). */
export const session = {me: null, config: {languages: Object.keys(LANGUAGES)}};

export function can(privilege) {
  if (!privilege) return Boolean(session.me);
  return Boolean(session.me && session.me.user.privileges.includes(privilege));
}

export function navigate(hash, {replace = false} = {}) {
  if (replace) {
    history.replaceState(null, '', hash);
    route();
  } else if (location.hash === hash) {
    route();
  } else {
    location.hash = hash;
  }
}

function parseHash() {
  const raw = location.hash.replace(/^#\/?/, '');
  const i = raw.indexOf('?');
  const path = (i < 0 ? raw : raw.slice(0, i)) || 'list';
  return {name: decodeURIComponent(path), params: new URLSearchParams(i < 0 ? '' : raw.slice(i + 1))};
}

/** Called after any login: remember the user and its CSRF token. */
export function loggedIn(body) {
  setCsrf(body.csrf_token);
  session.me = {user: body.user, auth: 'session'};
  renderChrome();
}

async function loadMe() {
  try {
    const me = await api('/api/me');
    setCsrf(me.csrf_token);
    session.me = me;
  } catch (err) {
    if (err.status !== 401) throw err;
    session.me = null;
  }
}

const CREDENTIAL_KEYS = ['id', 'password'];
const CODE_KEYS = ['code', 'Code', 'key_id'];

/** The raw code value: base64 may hold '+', which URLSearchParams would turn into a space. */
function rawParam(names) {
  const raw = location.hash.slice(location.hash.indexOf('?') + 1);
  for (const part of raw.split('&')) {
    const i = part.indexOf('=');
    if (i > 0 && names.includes(part.slice(0, i))) {
      try {
        return decodeURIComponent(part.slice(i + 1));
      } catch {
        return part.slice(i + 1);
      }
    }
  }
  return null;
}

/**
 * HIS/RIS links (SPEC E6): id/password (when the url_login setting allows it) or an OTP
 * `code` log in; the credentials leave the address bar and the history entry BEFORE the
 * request is sent (history.replaceState), whatever the outcome.
 */
async function urlLogin(name, params) {
  const id = params.get('id');
  const password = params.get('password');
  const code = rawParam(['code', 'Code']);
  const keyId = params.get('key_id');
  if (id === null && password === null && !code) return;
  const rest = new URLSearchParams();
  for (const [k, v] of params) if (!CREDENTIAL_KEYS.includes(k) && !CODE_KEYS.includes(k)) rest.append(k, v);
  history.replaceState(null, '', hashUrl(name, rest));
  try {
    if (code) {
      loggedIn(await api('/api/otp/login', {method: 'POST', body: keyId ? {code, key_id: keyId} : {code}}));
    } else if (session.config.url_login) {
      loggedIn(await api('/api/login', {method: 'POST', body: {username: id || '', password: password || ''}}));
    } else {
      toast(t('login.url_disabled'), 'error');
    }
  } catch (err) {
    toast(`${t('login.failed')}: ${err.message}`, 'error');
  }
}

let renderToken = 0;

export async function route() {
  const token = ++renderToken;
  const view = document.getElementById('view');
  let {name, params} = parseHash();
  if ([...params.keys()].some((k) => CREDENTIAL_KEYS.includes(k) || CODE_KEYS.includes(k))) {
    await urlLogin(name, params);
    ({name, params} = parseHash());
  }
  const page = pages.find((p) => p.route === name);
  if (!page) {
    view.replaceChildren(h('div', {class: 'page', dataset: {ready: location.hash}}, h('h1', {}, t('error.not_found')),
      h('p', {}, h('a', {href: '#/list'}, t('nav.list')))));
    return;
  }
  if (!page.public && !session.me) {
    const next = location.hash || '#/list';
    navigate(hashUrl('login', {next}), {replace: true});
    return;
  }
  if (session.me && session.me.user.must_change_password && !page.public && page.route !== 'password') {
    navigate(hashUrl('password', {next: location.hash}), {replace: true});
    return;
  }
  if (!page.public && page.privilege && !can(page.privilege)) {
    view.replaceChildren(h('div', {class: 'page', dataset: {ready: location.hash}}, h('h1', {}, t(page.title)),
      errorBox(t('error.forbidden', {p: page.privilege}))));
    return;
  }
  document.title = `${t(page.title)} — pacsbox`;
  markNav(name);
  view.replaceChildren(loading());
  try {
    const mod = await import(page.module.replace('./', './pages/'));
    if (token !== renderToken) return;
    const el = h('div', {class: `page page-${page.route}`});
    view.replaceChildren(el);
    await mod.render({el, params, session, can, navigate, isCurrent: () => token === renderToken});
    if (token === renderToken) el.dataset.ready = location.hash; // tests and scripts wait on this
  } catch (err) {
    if (token !== renderToken) return;
    if (err instanceof ApiError && err.status === 401) {
      session.me = null;
      renderChrome();
      navigate(hashUrl('login', {next: location.hash}), {replace: true});
      return;
    }
    const box = h('div', {class: `page page-${page.route}`, dataset: {ready: location.hash}}, h('h1', {}, t(page.title)), errorBox(err));
    view.replaceChildren(box);
  }
}

function markNav(name) {
  for (const a of document.querySelectorAll('#nav a')) {
    if (a.dataset.route === name) a.setAttribute('aria-current', 'page');
    else a.removeAttribute('aria-current');
  }
}

export function renderChrome() {
  const nav = document.getElementById('nav');
  const items = [];
  if (session.me && !session.me.user.must_change_password) {
    for (const group of ['main', 'admin']) {
      const links = pages.filter((p) => p.nav === group && can(p.privilege))
        .map((p) => h('a', {href: `#/${p.route}`, dataset: {route: p.route}}, t(p.title)));
      if (links.length) items.push(h('span', {class: `nav-group ${group}`}, links));
    }
  }
  nav.replaceChildren(...items);
  const who = document.getElementById('who');
  who.textContent = session.me ? session.me.user.full_name || session.me.user.username : '';
  who.title = session.me ? `${session.me.user.username} (${session.me.user.role})` : '';
  document.getElementById('logout').hidden = !session.me || session.me.auth !== 'session';
  document.getElementById('institution').textContent = session.config.institution_name || '';
  translateDom(document);
  markNav(parseHash().name);
}

async function logout() {
  try {
    await api('/api/logout', {method: 'POST'});
  } catch (err) {
    toast(err.message, 'error');
  }
  session.me = null;
  setCsrf(null);
  renderChrome();
  navigate('#/login');
}

function languagePicker() {
  const select = document.getElementById('lang');
  const codes = (session.config.languages || ['en']).filter((c) => LANGUAGES[c]);
  select.replaceChildren(...codes.map((c) => h('option', {value: c, selected: c === language()}, LANGUAGES[c])));
  select.addEventListener('change', async () => {
    await setLanguage(select.value);
    renderChrome();
    route();
  });
}

async function start() {
  try {
    session.config = {...session.config, ...(await api('/api/ui-config'))};
  } catch {
    // older servers: defaults (English + Italian, no URL login)
  }
  await initLanguage(session.config.languages);
  languagePicker();
  document.getElementById('logout').addEventListener('click', logout);
  await loadMe();
  renderChrome();
  window.addEventListener('hashchange', route);
  window.addEventListener('pacsbox:unauthorized', () => {
    if (!session.me) return;
    session.me = null;
    setCsrf(null);
    renderChrome();
    toast(t('login.expired'), 'error');
    navigate(hashUrl('login', {next: location.hash}), {replace: true});
  });
  await route();
}

start().catch((err) => {
  document.getElementById('view').replaceChildren(errorBox(err));
});
