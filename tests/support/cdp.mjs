// A headless Chromium driven over the DevTools protocol, for the browser
// tests: one page, navigation that waits for the load event, evaluation,
// screenshots. No dependencies beyond Node 20's WebSocket.
import { spawn } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

export async function openBrowser() {
  const profile = mkdtempSync(join(tmpdir(), "mailpipe-chromium-"));
  const chrome = spawn(process.env.CHROMIUM || "chromium", [
    "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
    "--remote-debugging-port=0", `--user-data-dir=${profile}`, "--window-size=1280,1000", "about:blank",
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
  const loaded = async (action) => { const done = once("Page.loadEventFired", sessionId); await action(); await done; };
  return {
    evaluate,
    goto: (url) => loaded(() => s("Page.navigate", { url })),
    clickAndWait: (selector) => loaded(() => evaluate(`document.querySelector(${JSON.stringify(selector)}).click()`)),
    screenshot: async () => Buffer.from((await s("Page.captureScreenshot", { format: "png" })).data, "base64"),
    async close() {
      ws.close();
      const exited = new Promise((r) => chrome.once("exit", r));
      chrome.kill("SIGKILL");
      await exited;
      try { rmSync(profile, { recursive: true, force: true }); } catch { /* a temp dir; not worth failing over */ }
    },
  };
}
