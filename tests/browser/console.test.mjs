// The console in a real browser: Debian's chromium driven by playwright-core, against the real
// `keyturn serve` in front of `keyturn sim`. Run by `cargo xtask browser`:
//   node console.test.mjs <path to keyturn> <folder for screenshots>
// It signs in with an admin token, sees every key, makes the simulator throttle a project and
// kill a key, sees both appear without a reload, resets the dead key through its button and the
// confirmation, and sees it come back; disables and enables a key through its buttons; sees a
// change to the keys file add a key and the last reload shown. A client token gets 401 on /console and
// /admin/*. Then `keyturn console` (read-only, beside the running proxy on the same state folder)
// shows the same page with every key and no action buttons.

import { spawn, execFileSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import { mkdirSync, mkdtempSync, writeFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { chromium } from "playwright-core";

const [keyturn, outDir] = process.argv.slice(2);
if (!keyturn || !outDir) {
  console.error("usage: node console.test.mjs <keyturn binary> <screenshot folder>");
  process.exit(2);
}
const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";
const FLASH = "gemini-2.5-flash";
const WAIT = 30000; // how long the page may take to show a change (polls every 2 s)

mkdirSync(outDir, { recursive: true });
const work = mkdtempSync(join(tmpdir(), "keyturn-browser-"));
const children = [];
let failures = 0;

function check(ok, what) {
  console.log((ok ? "PASS " : "FAIL ") + what);
  if (!ok) failures++;
}

// Made-up keys: random filler, never shaped like a Google key (the secrets check flags those).
const madeUp = () => "test-key-" + randomBytes(12).toString("hex");
const keys = { alpha: madeUp(), beta: madeUp(), gamma: madeUp() };

// Starts a command and resolves with the first stdout line that starts with `prefix`.
function start(args, env, prefix) {
  return new Promise((resolve, reject) => {
    const child = spawn(keyturn, args, { env: { ...process.env, ...env }, stdio: ["ignore", "pipe", "pipe"] });
    children.push(child);
    let buf = "";
    child.stdout.on("data", (d) => {
      buf += d.toString();
      for (const line of buf.split("\n")) {
        if (line.startsWith(prefix)) resolve(line.slice(prefix.length).trim().split(/\s+/)[0]);
      }
    });
    child.stderr.on("data", (d) => process.stderr.write("[" + args[0] + "] " + d));
    child.on("exit", (code) => reject(new Error(args[0] + " exited with " + code + " before it listened")));
  });
}

function token(admin) {
  const out = execFileSync(keyturn, ["serve", "token", "new", "--label", admin ? "ops" : "team"].concat(admin ? ["--admin"] : []), { encoding: "utf8" });
  const lines = out.split("\n");
  return {
    token: lines.map((l) => l.trim()).find((l) => l.startsWith("kt_")),
    toml: lines.slice(lines.findIndex((l) => l.startsWith("[[serve."))).join("\n"),
  };
}

async function main() {
  const sim = await start(
    ["sim", "--port", "0", "--rpm", "1000", "--tpm", "10000000", "--rpd", "100000", "--key", keys.alpha + "@acme", "--key", keys.beta + "@acme", "--key", keys.gamma + "@solo"],
    {}, "keyturn sim listening on ");
  const client = token(false);
  const admin = token(true);
  writeFileSync(join(work, "keys.txt"),
    `${keys.alpha} label=alpha project=acme\n${keys.beta} label=beta project=acme\n${keys.gamma} label=gamma project=solo\n`);
  writeFileSync(join(work, "keyturn.toml"),
    `[state]\ndir = "${join(work, "state")}"\n[rotation]\nmax_wait = "0s"\n` +
    `[models."${FLASH}"]\nrpm = 100\ntpm = 1000000\nrpd = 1000\n\n` + client.toml + "\n" + admin.toml + "\n");
  const proxy = await start(["serve", "--listen", "127.0.0.1:0"], {
    KEYTURN_CONFIG: join(work, "keyturn.toml"),
    KEYTURN_KEYS_FILE: join(work, "keys.txt"),
    GEMINI_BASE_URL: sim,
  }, "keyturn serve listening on ");
  console.log("sim " + sim + ", proxy " + proxy);

  const generate = () => fetch(proxy + `/v1beta/models/${FLASH}:generateContent`, {
    method: "POST",
    headers: { "content-type": "application/json", "x-goog-api-key": client.token },
    body: JSON.stringify({ contents: [{ parts: [{ text: "hello from the browser test" }] }] }),
  }).then((r) => r.status);
  const simAdmin = (path, body) => fetch(sim + path, {
    method: "PUT", headers: { "content-type": "application/json" }, body: JSON.stringify(body),
  }).then((r) => { if (!r.ok) throw new Error(path + ": " + r.status); });

  // A client token never reaches the console or the admin API.
  for (const [method, path] of [["GET", "/console"], ["GET", "/admin/status"], ["GET", "/admin/history"],
    ["GET", "/admin/events"], ["POST", "/admin/keys/alpha/reset"], ["POST", "/admin/scopes/reset"]]) {
    const r = await fetch(proxy + path, { method, headers: { authorization: "Bearer " + client.token } });
    check(r.status === 401, `client token: ${method} ${path} -> ${r.status}`);
  }

  for (let i = 0; i < 6; i++) check((await generate()) === 200, "request " + (i + 1) + " served");

  const browser = await chromium.launch({ executablePath: CHROMIUM, args: ["--no-sandbox"] });
  try {
    const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
    const errors = [];
    page.on("pageerror", (e) => errors.push(String(e)));
    const first = await page.goto(proxy + "/console");
    check(first.status() === 401, "/console without a token asks to sign in (" + first.status() + ")");
    await page.fill("#token", client.token);
    await page.click("button[type=submit]");
    check((await page.locator("#token").count()) === 1, "a client token cannot sign in");
    await page.fill("#token", admin.token);
    await page.click("button[type=submit]");
    await page.waitForSelector("#keys tbody tr", { timeout: WAIT });
    await page.evaluate(() => { window.__sameDocument = true; });
    for (const label of ["alpha", "beta", "gamma"]) {
      await page.waitForSelector(`#keys tr[data-key="${label}"][data-state="usable"]`, { timeout: WAIT });
      check(true, "key " + label + " shown as usable");
    }
    const text = await page.textContent("body");
    check(!Object.values(keys).some((k) => text.includes(k)), "no key appears on the page");
    await page.waitForSelector("#chart-keys canvas", { timeout: WAIT });
    check(true, "the 30-day chart per key is drawn");
    await page.screenshot({ path: join(outDir, "console-start.png"), fullPage: true });

    // The server throttles project acme: one request a minute.
    await simAdmin("/admin/limits", { model: FLASH, project: "acme", rpm: 1 });
    for (let i = 0; i < 4; i++) await generate();
    await page.waitForSelector(`#scopes tr[data-scope="acme|${FLASH}"][data-state="cooling"]`, { timeout: WAIT });
    check(true, "the per-minute 429 shows as acme cooling, without a reload");
    await page.waitForSelector(`#events li[data-kind="throttled"]`, { timeout: WAIT });
    check(true, "the throttle is in the recent events");

    // The server kills gamma (acme is cooling, so requests go to gamma).
    await simAdmin("/admin/keys", { label: "key-3", state: "invalid" });
    for (let i = 0; i < 3; i++) await generate();
    await page.waitForSelector(`#keys tr[data-key="gamma"][data-state="disabled"]`, { timeout: WAIT });
    check(true, "the dead key shows as disabled, without a reload");
    await page.waitForSelector(`#events li[data-kind="key_disabled"]`, { timeout: WAIT });
    check(true, "the dead key is in the recent events");
    await page.waitForSelector(`#events li[data-kind="warning"]`, { timeout: WAIT });
    check(true, "the monitor's warning about it is in the recent events");
    await page.screenshot({ path: join(outDir, "console-trouble.png"), fullPage: true });
    await page.screenshot({ path: join(outDir, "console-readme.png"), clip: { x: 0, y: 0, width: 1280, height: 660 } });

    // The key is fixed at Google; the operator resets it through the button.
    await simAdmin("/admin/keys", { label: "key-3", state: "valid" });
    await page.click(`#keys tr[data-key="gamma"] button:text("Reset")`);
    await page.waitForSelector("#confirm[open]", { timeout: WAIT });
    check((await page.textContent("#confirm-text")).includes("gamma"), "the confirmation names the key");
    await page.screenshot({ path: join(outDir, "console-confirm.png") });
    await page.click("#confirm-ok");
    await page.waitForSelector(`#keys tr[data-key="gamma"][data-state="usable"]`, { timeout: WAIT });
    check(true, "the reset key is back");
    await page.waitForSelector(`#events li[data-kind="admin_reset"]`, { timeout: WAIT });
    check(true, "the reset is in the recent events");
    check((await generate()) === 200, "a request is served after the reset");

    // The operator takes gamma out of rotation, then puts it back, each through its button.
    await page.click(`#keys tr[data-key="gamma"] button:text("Disable")`);
    await page.waitForSelector("#confirm[open]", { timeout: WAIT });
    check((await page.textContent("#confirm-text")).includes("gamma"), "the disable confirmation names the key");
    await page.click("#confirm-ok");
    await page.waitForSelector(`#keys tr[data-key="gamma"][data-state="disabled"]`, { timeout: WAIT });
    check((await page.textContent(`#keys tr[data-key="gamma"]`)).includes("disabled (by admin)"),
      "the key shows as disabled by admin");
    await page.waitForSelector(`#events li[data-kind="admin_disable"]`, { timeout: WAIT });
    check(true, "the disable is in the recent events");
    await page.screenshot({ path: join(outDir, "console-disabled.png"), fullPage: true });
    await page.click(`#keys tr[data-key="gamma"] button:text("Enable")`);
    await page.waitForSelector("#confirm[open]", { timeout: WAIT });
    await page.click("#confirm-ok");
    await page.waitForSelector(`#keys tr[data-key="gamma"][data-state="usable"]`, { timeout: WAIT });
    check(true, "the enabled key is back");

    // A reload without a restart: a fourth key joins when the keys file changes (shown only: the
    // simulator does not know it, and no request needs it), and the summary says so.
    const delta = madeUp();
    writeFileSync(join(work, "keys.txt"),
      `${keys.alpha} label=alpha project=acme\n${keys.beta} label=beta project=acme\n${keys.gamma} label=gamma project=solo\n${delta} label=delta project=solo2\n`);
    await page.waitForSelector(`#last-reload.ok`, { timeout: WAIT });
    check((await page.textContent("#last-reload")).includes("+delta"), "the last reload names the key it added");
    await page.waitForSelector(`#keys tr[data-key="delta"]`, { timeout: WAIT });
    check(true, "the new key is shown without a restart");
    check(!(await page.textContent("body")).includes(delta), "the new key itself never appears");
    check(await page.evaluate(() => window.__sameDocument === true), "the page never reloaded");
    check(errors.length === 0, "no script errors: " + errors.join("; "));
    await page.screenshot({ path: join(outDir, "console.png"), fullPage: false });

    const phone = await browser.newPage({ viewport: { width: 390, height: 844 }, deviceScaleFactor: 2 });
    await phone.context().addCookies(await page.context().cookies());
    await phone.goto(proxy + "/console");
    await phone.waitForSelector(`#keys tr[data-key="gamma"]`, { timeout: WAIT });
    const overflow = await phone.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
    check(overflow <= 1, "on a phone the page does not scroll sideways (" + overflow + " px)");
    await phone.screenshot({ path: join(outDir, "console-phone.png"), fullPage: true });

    // `keyturn console`: the same page over the state folder the proxy writes, read-only, so it
    // runs beside the proxy (it never takes the state file's lock).
    const standalone = (await start(["console", "--listen", "127.0.0.1:0"], {
      KEYTURN_CONFIG: join(work, "keyturn.toml"),
      KEYTURN_KEYS_FILE: join(work, "keys.txt"),
      GEMINI_BASE_URL: sim,
    }, "keyturn console on ")).replace(/\/console$/, "");
    const solo = await browser.newPage({ viewport: { width: 1280, height: 900 } });
    solo.on("pageerror", (e) => errors.push(String(e)));
    const soloFirst = await solo.goto(standalone + "/console");
    if (soloFirst.status() === 401) {
      await solo.fill("#token", admin.token);
      await solo.click("button[type=submit]");
    }
    for (const label of ["alpha", "beta", "gamma", "delta"]) {
      await solo.waitForSelector(`#keys tr[data-key="${label}"]`, { timeout: WAIT });
    }
    check(true, "keyturn console shows every key of the state folder");
    await solo.waitForSelector("#read-only", { timeout: WAIT });
    check(true, "keyturn console says it is read-only");
    check(!(await solo.isVisible(`#keys tr[data-key="alpha"] button`)), "a read-only console shows no action buttons");
    check((await solo.textContent("#view")).includes("read-only"), "it says where its view comes from");
    const soloText = await solo.textContent("body");
    check(!Object.values(keys).concat([delta]).some((k) => soloText.includes(k)), "no key appears on its page");
    check(errors.length === 0, "no script errors in keyturn console: " + errors.join("; "));
    await solo.screenshot({ path: join(outDir, "console-standalone.png"), fullPage: true });
  } finally {
    await browser.close();
  }
}

try {
  await main();
} catch (e) {
  console.error("FAIL " + (e && e.stack ? e.stack : e));
  failures++;
} finally {
  for (const c of children) c.kill("SIGTERM");
  rmSync(work, { recursive: true, force: true });
}
console.log(failures === 0 ? "browser test: all checks passed; screenshots in " + outDir : "browser test: " + failures + " check(s) failed");
process.exit(failures === 0 ? 0 : 1);
