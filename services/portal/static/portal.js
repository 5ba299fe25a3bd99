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

async function refreshMain() {
  const answer = await fetch(location.href, { credentials: "same-origin" });
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
          credentials: "same-origin",
          headers: { accept: "application/json" },
        });
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

function start(root) {
  localTimes(root);
  countDown(root);
  follow(root);
}

document.addEventListener("DOMContentLoaded", () => {
  start(document);
  setInterval(() => countDown(document), 30000);
});
