// Share links (SPEC E7): GET /api/shares, revoke with DELETE /api/shares/{id}.
import {api} from '../api.js';
import {h} from '../dom.js';
import {t} from '../i18n.js';
import {sharesTable} from './study.js';

export async function render({el, can, session, navigate, params}) {
  const shares = await api('/api/shares');
  el.append(h('h1', {}, t('nav.shares')), h('p', {class: 'muted'}, t('share.help')),
    sharesTable(shares, () => { el.replaceChildren(); render({el, can, session, navigate, params}); }));
}
