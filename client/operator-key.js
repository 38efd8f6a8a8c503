// The operator key of the operator's pages (dashboard, editor). It is kept
// for this tab only (sessionStorage, shared by the pages a tab opens) and
// taken out of the address bar, so it does not end up in screenshots,
// screen shares or the browser history.
import { params } from "/static/captions.js";

const STORAGE = "livecap.operatorKey";

export class OperatorKey {
  /**
   * @param {{form: HTMLFormElement, input: HTMLInputElement, message: HTMLElement,
   *          onKey: (key: string) => void}} elements  the page's key form; onKey runs with each key given
   */
  constructor({ form, input, message, onKey }) {
    Object.assign(this, { form, input, message });
    this.value = params.get("token") ?? sessionStorage.getItem(STORAGE);
    if (params.has("token")) {
      sessionStorage.setItem(STORAGE, this.value);
      const url = new URL(location.href);
      url.searchParams.delete("token");
      history.replaceState(null, "", url);
    }
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      this.value = input.value.trim();
      sessionStorage.setItem(STORAGE, this.value);
      form.hidden = true;
      onKey(this.value);
    });
  }

  /** Show the form (with why, if `why`): no key yet, or the server did not accept it. */
  ask(why) {
    this.form.hidden = false;
    this.message.hidden = !why;
    this.message.textContent = why ?? "";
    this.input.focus();
  }

  /** Fetch options that present the key. */
  authorized(init = {}) {
    return { ...init, cache: "no-store", headers: { ...init.headers, Authorization: `Bearer ${this.value}` } };
  }
}
