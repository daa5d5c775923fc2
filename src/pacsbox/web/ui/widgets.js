// Shared widgets: toasts, dialogs (Esc closes, Enter submits), tables, progress, pager.
import {h} from './dom.js';
import {t} from './i18n.js';

export function toast(message, kind = 'info') {
  const box = document.getElementById('toasts');
  const el = h('div', {class: `toast ${kind}`, role: kind === 'error' ? 'alert' : 'status'},
    message);
  box.append(el);
  setTimeout(() => el.remove(), kind === 'error' ? 9000 : 5000);
  return el;
}

/** An error box for a page section (message of an ApiError or any Error). */
export function errorBox(err) {
  return h('div', {class: 'error-box', role: 'alert'}, err && err.message ? err.message : String(err));
}

/**
 * A modal <dialog>: content is built by build(form); resolves with the value returned by
 * submit(form) (which may throw to keep the dialog open and show the error), or null on cancel.
 */
export function dialog({title, build, submit, okLabel, danger = false, wide = false, info = false}) {
  return new Promise((resolve) => {
    const error = h('p', {class: 'error-box', role: 'alert', hidden: true});
    const form = h('form', {method: 'dialog', class: 'dialog-form'});
    const ok = h('button', {type: 'submit', class: danger ? 'danger' : 'primary'},
      okLabel || t('common.ok'));
    const cancel = h('button', {type: 'button', class: 'ghost'}, t('common.cancel'));
    const dlg = h('dialog', {class: wide ? 'wide' : '', 'aria-label': title},
      h('h2', {}, title), form);
    form.append(...[].concat(build ? build(form) : []), error,
      h('div', {class: 'dialog-actions'}, info ? null : cancel, ok));
    let result = null;
    cancel.addEventListener('click', () => dlg.close());
    form.addEventListener('submit', async (e) => {
      e.preventDefault();
      ok.disabled = true;
      error.hidden = true;
      try {
        result = submit ? await submit(form) : true;
        dlg.close();
      } catch (err) {
        error.textContent = err.message;
        error.hidden = false;
      } finally {
        ok.disabled = false;
      }
    });
    dlg.addEventListener('close', () => {
      dlg.remove();
      resolve(result);
    });
    document.body.append(dlg);
    dlg.showModal();
    const first = form.querySelector('input:not([type=hidden]), select, textarea');
    (first || ok).focus();
  });
}

export function confirmDialog(title, message, okLabel, danger = true) {
  return dialog({title, build: () => [h('p', {}, message)], okLabel, danger});
}

/** A determinate progress bar; update(done, total) with total 0 = indeterminate. */
export function progressBar(label) {
  const bar = h('progress', {max: 100});
  const text = h('span', {class: 'muted'}, label);
  const el = h('div', {class: 'progress'}, text, bar);
  return {
    el,
    update(done, total, caption) {
      if (total) { bar.max = total; bar.value = Math.min(done, total); } else { bar.removeAttribute('value'); }
      if (caption) text.textContent = caption;
    },
  };
}

/** Table from column specs [{label, value: row => node|string, sort?: key, class?}]. */
export function table(columns, rows, {onRow, sort, onSort, empty, rowLabel} = {}) {
  const head = h('tr', {}, columns.map((c) => {
    if (!c.sort || !onSort) return h('th', {scope: 'col', class: c.class || ''}, c.label);
    const active = sort === c.sort ? 'ascending' : sort === `-${c.sort}` ? 'descending' : 'none';
    const next = sort === c.sort ? `-${c.sort}` : c.sort;
    return h('th', {scope: 'col', class: c.class || '', 'aria-sort': active},
      h('button', {type: 'button', class: 'sort', onclick: () => onSort(next)}, c.label,
        h('span', {class: 'arrow', 'aria-hidden': 'true'},
          active === 'ascending' ? ' ▲' : active === 'descending' ? ' ▼' : '')));
  }));
  const body = h('tbody');
  for (const row of rows) {
    const tr = h('tr', {}, columns.map((c) => h('td', {class: c.class || '', dataset: c.key ? {col: c.key} : null}, c.value(row))));
    if (onRow) {
      tr.tabIndex = 0;
      tr.classList.add('clickable');
      if (rowLabel) tr.setAttribute('aria-label', rowLabel(row));
      tr.addEventListener('click', (e) => {
        if (!e.target.closest('a, button, input, select')) onRow(row, e);
      });
      tr.addEventListener('keydown', (e) => {
        if (e.key === 'Enter' && e.target === tr) onRow(row, e);
      });
    }
    body.append(tr);
  }
  if (!rows.length) {
    body.append(h('tr', {}, h('td', {colspan: columns.length, class: 'empty'},
      empty || t('common.nothing'))));
  }
  return h('div', {class: 'table-wrap'}, h('table', {}, h('thead', {}, head), body));
}

/** Previous / next with "a–b of n" and a page size choice. */
export function pager({offset, limit, total, onChange, sizes = [25, 50, 100, 200]}) {
  const last = Math.min(offset + limit, total);
  return h('div', {class: 'pager'},
    h('button', {type: 'button', class: 'ghost', disabled: offset <= 0,
      onclick: () => onChange(Math.max(0, offset - limit), limit)}, `‹ ${t('common.prev')}`),
    h('span', {class: 'muted'}, t('common.range', {a: total ? offset + 1 : 0, b: last, n: total})),
    h('button', {type: 'button', class: 'ghost', disabled: last >= total,
      onclick: () => onChange(offset + limit, limit)}, `${t('common.next')} ›`),
    h('label', {class: 'inline'}, h('span', {class: 'muted'}, t('common.per_page')),
      h('select', {onchange: (e) => onChange(0, Number(e.target.value))},
        sizes.map((s) => h('option', {value: s, selected: s === limit}, String(s))))));
}

export function loading() {
  return h('p', {class: 'loading', role: 'status'}, h('span', {class: 'spinner', 'aria-hidden': 'true'}),
    t('common.loading'));
}

export function badge(text, kind = '') {
  return h('span', {class: `badge ${kind}`}, text);
}
