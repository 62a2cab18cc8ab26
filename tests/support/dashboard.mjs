// Signs in to the dashboard as a tenant would, in headless Chromium: opens
// a campaign page (which asks for the API key), fills in the form, and
// lands on the page; saves a screenshot. Prints what it saw as JSON.
//
// usage: node --experimental-websocket dashboard.mjs PAGE_URL API_KEY SCREENSHOT
import { writeFileSync } from "node:fs";
import { openBrowser } from "./cdp.mjs";

const [pageUrl, key, shot] = process.argv.slice(2);
const { goto, evaluate, clickAndWait, screenshot, close } = await openBrowser();

const out = {};
await goto(pageUrl);
out.before = await evaluate("document.body.innerText");
await evaluate(`document.querySelector("input[name=key]").value = ${JSON.stringify(key)}`);
await clickAndWait("button[type=submit]");
out.url = await evaluate("location.href");
out.cookieSeenByScripts = await evaluate("document.cookie");
out.svgs = await evaluate("document.querySelectorAll('svg').length");
out.text = await evaluate("document.body.innerText");
writeFileSync(shot, await screenshot());
console.log(JSON.stringify(out));
await close();
process.exit(0);
