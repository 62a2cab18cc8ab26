// Drives headless Chromium over the DevTools protocol, as a recipient would:
// opens a rendered message (which loads the open pixel), clicks its shop
// link (through the tracker's redirect), then opens the unsubscribe link and
// presses the page's button. Prints what it saw as JSON.
//
// usage: node --experimental-websocket browser.mjs MESSAGE_URL
import { spawn } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

const pageUrl = process.argv[2];
const profile = mkdtempSync(join(tmpdir(), "mailpipe-chromium-"));
const chrome = spawn(process.env.CHROMIUM || "chromium", [
  "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
  "--remote-debugging-port=0", `--user-data-dir=${profile}`, "about:blank",
], { stdio: ["ignore", "ignore", "pipe"] });

const fail = (msg) => { console.error(msg); chrome.kill("SIGKILL"); process.exit(1); };
setTimeout(() => fail("browser test timed out"), 60000).unref();

const wsUrl = await new Promise((resolve) => {
  let buf = "";
  chrome.stderr.on("data", (d) => {
    buf += d;
    const m = buf.match(/DevTools listening on (ws:\/\/\S+)/);
    if (m) resolve(m[1]);
  });
});

const ws = new WebSocket(wsUrl);
await new Promise((r) => ws.addEventListener("open", r, { once: true }));
let nextId = 1;
const pending = new Map();
const waiters = [];
ws.addEventListener("message", (ev) => {
  const msg = JSON.parse(ev.data);
  if (msg.id && pending.has(msg.id)) {
    const { resolve, reject } = pending.get(msg.id);
    pending.delete(msg.id);
    msg.error ? reject(new Error(JSON.stringify(msg.error))) : resolve(msg.result);
  } else if (msg.method) {
    for (const w of [...waiters]) {
      if (w.method === msg.method && w.session === msg.sessionId) {
        waiters.splice(waiters.indexOf(w), 1);
        w.resolve(msg.params);
      }
    }
  }
});
const send = (method, params = {}, sessionId) => new Promise((resolve, reject) => {
  const id = nextId++;
  pending.set(id, { resolve, reject });
  ws.send(JSON.stringify({ id, method, params, sessionId }));
});
const once = (method, session) => new Promise((resolve) => waiters.push({ method, session, resolve }));

const { targetId } = await send("Target.createTarget", { url: "about:blank" });
const { sessionId } = await send("Target.attachToTarget", { targetId, flatten: true });
const s = (m, p) => send(m, p, sessionId);
await s("Page.enable");
const evaluate = async (expr) => (await s("Runtime.evaluate", { expression: expr, returnByValue: true })).result.value;
const goto = async (url) => { const loaded = once("Page.loadEventFired", sessionId); await s("Page.navigate", { url }); await loaded; };
const clickAndWait = async (selector) => {
  const loaded = once("Page.loadEventFired", sessionId);
  await evaluate(`document.querySelector(${JSON.stringify(selector)}).click()`);
  await loaded;
};

const out = {};
await goto(pageUrl);
out.pixelLoaded = await evaluate(`[...document.images].some(i => i.src.includes("/o/") && i.complete && i.naturalWidth === 1)`);
const unsubHref = await evaluate(`document.querySelector("a.unsubscribe").href`);
await clickAndWait("a.shop");
out.afterClick = await evaluate("location.href");
out.landingText = await evaluate("document.body.innerText");
await goto(unsubHref);
out.unsubscribePage = await evaluate("document.body.innerText");
await clickAndWait("#confirm");
out.afterConfirm = await evaluate("document.body.innerText");

console.log(JSON.stringify(out));
ws.close();
const exited = new Promise((r) => chrome.once("exit", r));
chrome.kill("SIGKILL");
await exited;
try { rmSync(profile, { recursive: true, force: true }); } catch { /* a temp dir; not worth failing over */ }
process.exit(0);
