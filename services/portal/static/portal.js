// PIM portal: the little a page does in the browser. Times in the browser's own zone (the UTC
// value stays on hover), time left counting down, and requests followed live: when one
// reaches its end state the page's content is fetched again and swapped in, no reload.
"use strict";

function localTimes(root) {
  for (const t of root.querySelectorAll("time[datetime]")) {
    const when = new Date(t.getAttribute("datetime"));
    if (!isNaN(when)) {
      t.textContent = when.toLocaleString(undefined, { dateStyle: "medium", timeStyle: "short" });
    }
  }
}

function left(ms) {
  const s = Math.max(0, Math.floor(ms / 1000));
  const d = Math.floor(s / 86400), h = Math.floor((s % 86400) / 3600), m = Math.floor((s % 3600) / 60);
  if (d > 0) return d + "d " + h + "h left";
  if (h > 0) return h + "h " + m + "m left";
  if (m > 0) return m + "m left";
  return s + "s left";
}

function countDown(root) {
  for (const cell of root.querySelectorAll("[data-end]")) {
    cell.textContent = left(Number(cell.getAttribute("data-end")) - Date.now());
  }
}

// What the page asks by itself says so (x-pim-poll): it is not someone using the session, so
// the session's idle time goes on; once the session is gone the answer is 401, and the page
// is loaded again to show the sign-in instead of polling on.
const POLL = { credentials: "same-origin", headers: { "x-pim-poll": "1" } };

async function refreshMain() {
  const answer = await fetch(location.href, POLL);
  if (answer.status === 401) return location.reload();
  if (!answer.ok) return;
  const fresh = new DOMParser().parseFromString(await answer.text(), "text/html").querySelector("main");
  const main = document.querySelector("main");
  if (fresh && main) {
    main.replaceChildren(...fresh.childNodes);
    start(main);
  }
}

function follow(root) {
  const live = [...root.querySelectorAll("[data-request]")];
  if (live.length === 0) return;
  const poll = async () => {
    let ended = false;
    for (const el of live) {
      try {
        const answer = await fetch("/requests/" + encodeURIComponent(el.dataset.request) + "/status", {
          ...POLL,
          headers: { ...POLL.headers, accept: "application/json" },
        });
        if (answer.status === 401) return location.reload();
        if (!answer.ok) continue;
        const state = await answer.json();
        if (el.textContent !== state.status) el.textContent = state.status;
        if (state.final) ended = true;
      } catch (_) {
        // The next round tries again.
      }
    }
    if (ended) {
      await refreshMain();
    } else {
      setTimeout(poll, 1000);
    }
  };
  setTimeout(poll, 1000);
}

// Passkeys: the server's options go to navigator.credentials as WebAuthn's JSON, and the
// credential comes back the same way (the browser's own parse and toJSON, no hand encoding).
const PASSKEY = {
  register: { begin: "/account/passkeys/begin", finish: "/account/passkeys/finish", create: true },
  signin: { begin: "/signin/passkey/begin", finish: "/signin/passkey/finish" },
  "step-up": { begin: "/stepup/passkey/begin", finish: "/stepup/passkey/finish" },
};

async function call(path, csrf, body) {
  const answer = await fetch(path, {
    method: "POST",
    credentials: "same-origin",
    headers: { "content-type": "application/json", "x-csrf-token": csrf, accept: "application/json" },
    body: JSON.stringify(body || {}),
  });
  const json = await answer.json().catch(() => ({ error: "The portal did not answer." }));
  if (!answer.ok) throw new Error(json.error || "Refused.");
  return json;
}

async function passkey(button) {
  const kind = PASSKEY[button.dataset.passkey];
  const scope = button.closest("form, section, main");
  const status = scope.querySelector("[data-passkey-status]");
  const csrf = (scope.querySelector("input[name=csrf]") || document.querySelector("input[name=csrf]")).value;
  status.textContent = "Waiting for your passkey…";
  try {
    const started = await call(kind.begin, csrf);
    let credential;
    if (kind.create) {
      const options = PublicKeyCredential.parseCreationOptionsFromJSON(started.options.publicKey);
      credential = await navigator.credentials.create({ publicKey: options });
    } else {
      const options = PublicKeyCredential.parseRequestOptionsFromJSON(started.options.publicKey);
      credential = await navigator.credentials.get({ publicKey: options });
    }
    const name = document.getElementById("passkey-name");
    const done = await call(kind.finish, csrf, {
      ceremony: started.ceremony,
      credential: credential.toJSON(),
      name: name ? name.value : "",
    });
    if (done.redirect) {
      location.assign(done.redirect);
    } else if (button.dataset.passkey === "step-up") {
      // Stepped up: the refused form goes again, now without a code.
      const form = button.closest("form");
      form.querySelector("input[name=code]").removeAttribute("required");
      form.submit();
    }
  } catch (err) {
    status.textContent = err && err.message ? err.message : "The passkey was not used.";
  }
}

function passkeys(root) {
  for (const button of root.querySelectorAll("[data-passkey]")) {
    if (!window.PublicKeyCredential) {
      button.hidden = true;
      continue;
    }
    button.addEventListener("click", () => passkey(button));
  }
}

function start(root) {
  passkeys(root);
  localTimes(root);
  countDown(root);
  follow(root);
}

document.addEventListener("DOMContentLoaded", () => {
  start(document);
  setInterval(() => countDown(document), 30000);
});
