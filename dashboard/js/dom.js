/* global document -- browser globals: the lint config targets Node, this module runs in the page */
/**
 * A tiny element builder. Every piece of data reaches the page as a text node
 * or an attribute value, never parsed as HTML, so names and messages that
 * come from guests or backups cannot inject markup.
 */

/**
 * h('button', { type: 'button', onclick: fn, class: 'x' }, 'Stop')
 * Attributes: `on*` functions become listeners, `true` is a boolean
 * attribute, `false`/null/undefined are left out, the rest are set as strings.
 * Children: strings and numbers become text, arrays are flattened, null is skipped.
 */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs ?? {})) {
    if (v === false || v === null || v === undefined) continue;
    if (k.startsWith('on') && typeof v === 'function') el.addEventListener(k.slice(2), v);
    else if (v === true) el.setAttribute(k, '');
    else el.setAttribute(k, String(v));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const c of children) {
    if (c === null || c === undefined || c === false) continue;
    if (Array.isArray(c)) append(el, c);
    else if (typeof c === 'string' || typeof c === 'number') el.append(document.createTextNode(String(c)));
    else el.append(c);
  }
}

/** Replaces an element's children. */
export function replace(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}
