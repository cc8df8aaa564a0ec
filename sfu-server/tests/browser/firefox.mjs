// Firefox (Debian's firefox-esr) for the browser tests, driven over WebDriver
// BiDi by puppeteer-core (it never downloads a browser). Its pages are
// wrapped so that the shared helpers (chromium.mjs) use them as they use
// Playwright's: the same checks run in both WebRTC stacks.
import puppeteer from "puppeteer-core";

export const FIREFOX = process.env.FIREFOX ?? "/usr/bin/firefox-esr";

// A fresh profile with these prefs (puppeteer writes them to its user.js):
// ICE on loopback addresses, a fake microphone (a tone) without a permission
// prompt, playback without a user gesture, and host candidates as addresses,
// not mDNS names (nothing resolves .local in the test's namespace).
//
// Firefox gathers candidates only on the address of its default route until
// a page holds microphone access (and finds that address by routing towards
// the internet): scripts/browser-test.sh gives the namespace a default route
// through a veth pair on 127.0.0.2, so nothing leaves the namespace.
export const PREFS = {
  "media.peerconnection.ice.loopback": true,
  "media.peerconnection.ice.obfuscate_host_addresses": false,
  "media.navigator.streams.fake": true,
  "media.navigator.permission.disabled": true,
  "media.autoplay.default": 0,
  // No updates, telemetry or other traffic of its own.
  "app.update.enabled": false,
  "datareporting.policy.dataSubmissionEnabled": false,
  "network.captive-portal-service.enabled": false,
  "network.connectivity-service.enabled": false,
};

/** Starts headless Firefox; resolves with a browser like Playwright's. */
export async function launchFirefox() {
  const browser = await puppeteer.launch({
    browser: "firefox",
    executablePath: FIREFOX,
    headless: true,
    extraPrefsFirefox: PREFS,
    handleSIGINT: false,
    handleSIGTERM: false,
    handleSIGHUP: false,
  });
  const version = await browser.version();
  return {
    kind: "firefox",
    version: () => version,
    newContext: async () => {
      const context = await browser.createBrowserContext();
      return { newPage: async () => new FirefoxPage(await context.newPage()) };
    },
    close: () => browser.close(),
  };
}

/** A puppeteer page with the few Playwright page methods the tests use. */
class FirefoxPage {
  constructor(page) {
    this.page = page;
  }
  goto(url) {
    return this.page.goto(url);
  }
  /** Sets an input's value as typing would (an `input` event follows). */
  fill(selector, value) {
    return this.page.$eval(
      selector,
      (e, v) => {
        e.value = v;
        e.dispatchEvent(new Event("input", { bubbles: true }));
      },
      value,
    );
  }
  selectOption(selector, value) {
    return this.page.select(selector, value);
  }
  click(selector) {
    return this.page.click(selector);
  }
  textContent(selector) {
    return this.page.$eval(selector, (e) => e.textContent);
  }
  evaluate(fn, arg) {
    return this.page.evaluate(fn, arg);
  }
  addInitScript(fn) {
    return this.page.evaluateOnNewDocument(fn);
  }
  $$eval(selector, fn) {
    return this.page.$$eval(selector, fn);
  }
  waitForSelector(selector, { timeout } = {}) {
    return this.page.waitForSelector(selector, { timeout });
  }
  screenshot(options) {
    return this.page.screenshot(options);
  }
  /** `console` (a message with type() and text()) and `pageerror` (an Error), as Playwright. */
  on(event, handler) {
    return this.page.on(event, handler);
  }
  close() {
    return this.page.close();
  }
}
