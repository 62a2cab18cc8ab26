// Drives headless Chromium over the DevTools protocol, as a recipient would:
// opens a rendered message (which loads the open pixel), clicks its shop
// link (through the tracker's redirect), then opens the unsubscribe link and
// presses the page's button. Prints what it saw as JSON.
//
// usage: node --experimental-websocket browser.mjs MESSAGE_URL
import { openBrowser } from "./cdp.mjs";

const pageUrl = process.argv[2];
const { goto, evaluate, clickAndWait, close } = await openBrowser();

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
await close();
process.exit(0);
