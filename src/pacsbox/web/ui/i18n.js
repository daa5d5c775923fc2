// Translations: every string the user reads comes from i18n/<lang>.json (SPEC E4).
export const LANGUAGES = {en: 'English', it: 'Italiano'};
const STORE_KEY = 'pacsbox.lang';
let current = {};
let english = {};
let lang = 'en';

async function load(code) {
  const r = await fetch(`/ui/i18n/${code}.json`, {credentials: 'same-origin'});
  if (!r.ok) throw new Error(`no translation ${code}`);
  return r.json();
}

export function language() {
  return lang;
}

/** Pick the stored language, else the browser's, else English; load it. */
export async function initLanguage(available = Object.keys(LANGUAGES)) {
  english = await load('en');
  const stored = localStorage.getItem(STORE_KEY);
  const browser = (navigator.language || 'en').slice(0, 2);
  const wanted = [stored, browser, 'en'].find((c) => c && available.includes(c)) || 'en';
  await setLanguage(wanted);
}

export async function setLanguage(code) {
  current = code === 'en' ? english : await load(code);
  lang = code;
  localStorage.setItem(STORE_KEY, code);
  document.documentElement.lang = code;
  translateDom(document);
}

/** t('list.total', {n: 3}) → the string with {n} replaced; the key when untranslated. */
export function t(key, vars) {
  let s = current[key] ?? english[key] ?? key;
  if (vars) {
    for (const [k, v] of Object.entries(vars)) s = s.replaceAll(`{${k}}`, String(v));
  }
  return s;
}

/** Elements with data-i18n="key" get their text from the dictionary. */
export function translateDom(root) {
  for (const el of root.querySelectorAll('[data-i18n]')) el.textContent = t(el.dataset.i18n);
}
