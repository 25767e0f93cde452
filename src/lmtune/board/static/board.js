// board.js: the entry point of the lmtune board page: hash router, top nav, page lifetimes.
//
// Routes (docs/board.md): #/runs, #/run?path=P, #/compare?runs=A,B | ?collection=P,
// #/launch[?from=P], #/playground[?path=P]. Each page module exports `render(params, ctx)`,
// which draws into `ctx.root`; `ctx.poll()` timers stop when the page is left.

import { clearError, showError } from "./api.js";
import { purge } from "./charts.js";
import * as compare from "./compare.js";
import * as launch from "./launch.js";
import * as playground from "./playground.js";
import * as run from "./run.js";
import * as runs from "./runs.js";

const PAGES = {
  runs: { module: runs, title: "Runs" },
  run: { module: run, title: "Run" },
  compare: { module: compare, title: "Compare" },
  launch: { module: launch, title: "Launch" },
  playground: { module: playground, title: "Playground" },
};

/** One page's lifetime: its root element, its timers, and whether it is still shown. */
class PageContext {
  constructor(root) {
    this.root = root;
    this.alive = true;
    this.timers = new Set();
    this.cleanups = [];
  }

  /** Call `fn` now and again after `delay()` ms (a function, so the pace can change; null stops). */
  poll(fn, delay) {
    const tick = async () => {
      if (!this.alive) return;
      try {
        await fn();
      } catch (exc) {
        if (this.alive) showError(exc);
      }
      const ms = typeof delay === "function" ? delay() : delay;
      if (!this.alive || !ms) return; // a falsy delay stops the polling
      const id = setTimeout(() => {
        this.timers.delete(id);
        tick();
      }, ms);
      this.timers.add(id);
    };
    return tick();
  }

  onDispose(fn) {
    this.cleanups.push(fn);
  }

  dispose() {
    this.alive = false;
    for (const id of this.timers) clearTimeout(id);
    this.timers.clear();
    for (const fn of this.cleanups) {
      try {
        fn();
      } catch (exc) {
        console.error(exc);
      }
    }
    purge(this.root);
    this.root.remove();
  }
}

let current = null;

export function parseHash(hash = window.location.hash) {
  const text = hash.replace(/^#\/?/, "");
  const cut = text.indexOf("?");
  const name = cut < 0 ? text : text.slice(0, cut);
  const search = cut < 0 ? "" : text.slice(cut + 1);
  return { name: name || "runs", params: new URLSearchParams(search) };
}

async function navigate() {
  const { name, params } = parseHash();
  const page = PAGES[name];
  if (!page) {
    window.location.hash = "#/runs";
    return;
  }
  if (current) current.dispose();
  clearError();
  const root = document.createElement("div");
  root.className = `page page-${name}`;
  document.getElementById("page").append(root);
  const ctx = new PageContext(root);
  current = ctx;
  document.title = `${page.title} · lmtune board`;
  for (const item of document.querySelectorAll("#nav a")) {
    item.classList.toggle("active", item.dataset.page === (page.nav || name));
  }
  try {
    await page.module.render(params, ctx);
  } catch (exc) {
    if (ctx.alive) showError(exc);
  }
}

function start() {
  document.querySelector("#error .error-close").addEventListener("click", clearError);
  window.addEventListener("hashchange", navigate);
  window.addEventListener("unhandledrejection", (event) => showError(event.reason));
  if (!window.location.hash) {
    window.history.replaceState(null, "", "#/runs");
  }
  navigate();
}

start();
