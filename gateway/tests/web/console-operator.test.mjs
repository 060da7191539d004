// Browser test of the /debug console's operator view (the admin API in a page): real Chromium
// (Debian package) driven by playwright-core, against the real gateway binary in --dev mode (admin
// token dev-admin-token; tenant demo with the stream jobs and the durable consumer workers).
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { startGateway, launchBrowser, screenshot, adminGet, RawClient, DEV_ADMIN_TOKEN } from "./harness.mjs";

let gw, browser;

before(async () => {
  gw = await startGateway();
  browser = await launchBrowser();
});

after(async () => {
  if (browser) await browser.close();
  if (gw) gw.proc.kill("SIGTERM");
});

// Opens the console with the admin token in the fragment (no tenant token: no client connection).
async function openOperator(hash = `#admin=${DEV_ADMIN_TOKEN}`) {
  const page = await browser.newPage({ viewport: { width: 1500, height: 1000 } });
  await page.goto(`http://${gw.http}/debug${hash}`);
  return page;
}

const connRow = (page, name) => page.locator(`#op-conns tbody tr[data-name='${name}']`);

async function openConnections() {
  const { body } = await adminGet(gw.http, "connections");
  return body.connections;
}

async function waitUntil(what, fn, timeoutMs = 5000) {
  const deadline = Date.now() + timeoutMs;
  while (!(await fn())) {
    if (Date.now() > deadline) throw new Error("timed out waiting until " + what);
    await new Promise((r) => setTimeout(r, 50));
  }
}

test("the operator view lists connections with rates, tenants against limits, subscriptions and consumers", async () => {
  const a = await RawClient.hello(gw.tcp, "worker-a");
  const b = await RawClient.hello(gw.tcp, "worker-b");
  // worker-a subscribes with a queue group; worker-b takes a job from the durable consumer and holds it
  a.send([4, 1, "orders.>", "billing"]);
  assert.deepEqual(await a.expect(9), [9, 4, 1]);
  b.send([4, 1, "jobs.>", null, { durable: "workers" }]);
  assert.deepEqual(await b.expect(9), [9, 4, 1]);
  a.send([3, "jobs.resize", Buffer.from("img-7"), null, null, 1]);
  assert.deepEqual(await a.expect(9), [9, 3, 1]);
  const job = await b.expect(6);
  assert.equal(job[6], 1, "delivery id 1");

  const page = await openOperator();
  try {
    // the admin token went to sessionStorage and out of the address; the operator tab is open
    await page.waitForSelector("#view-operator:not([hidden])");
    assert.ok(!page.url().includes("admin"), page.url());
    assert.equal(await page.evaluate(() => sessionStorage.getItem("busgate.admin-token")), DEV_ADMIN_TOKEN);
    assert.ok(await page.isHidden("#view-client"));

    // connections: both names, their tenant, remote and subscriptions
    await connRow(page, "worker-a").waitFor();
    await connRow(page, "worker-b").waitFor();
    const conns = await openConnections();
    for (const name of ["worker-a", "worker-b"]) {
      const c = conns.find((x) => x.name === name);
      const row = connRow(page, name);
      assert.equal(await row.getAttribute("data-id"), String(c.id));
      assert.equal(await row.locator("td.c-tenant").textContent(), "demo");
      assert.match(await row.textContent(), new RegExp(c.remote.replace(/[.[\]]/g, "\\$&")));
      assert.equal(await row.locator("td.c-subs").textContent(), "1");
      assert.equal(await row.locator("td.c-pending").textContent(), "0 B");
    }

    // msgs/s and bytes/s come from successive polls: worker-a publishes, its rate goes above zero
    const ratesBefore = await connRow(page, "worker-a").locator("td.c-msgs-in").textContent();
    for (let i = 0; i < 40; i++) a.send([3, "orders.created", Buffer.from("order " + i)]);
    await page.waitForFunction(() => {
      const tr = document.querySelector("#op-conns tbody tr[data-name='worker-a']");
      return tr && parseFloat(tr.querySelector("td.c-msgs-in").textContent) > 0
        && /^[\d.]+ (B|KiB)\/s$/.test(tr.querySelector("td.c-bytes-in").textContent) && parseFloat(tr.querySelector("td.c-bytes-in").textContent) > 0;
    }, null, { timeout: 7000 });
    assert.ok(ratesBefore === "\u2013" || parseFloat(ratesBefore) >= 0, ratesBefore);
    // worker-a receives its own orders through the queue group: msgs/s out too
    await page.waitForFunction(() => parseFloat(document.querySelector("#op-conns tbody tr[data-name='worker-a'] td.c-msgs-out").textContent) > 0,
                               null, { timeout: 7000 });
    await screenshot(page, "operator-connections");

    // tenants against their limits, as the admin API says
    const demo = (await adminGet(gw.http, "tenants")).body.tenants.find((t) => t.name === "demo");
    const tenant = page.locator("#op-tenants tbody tr[data-tenant='demo']");
    assert.equal(await tenant.locator("td.t-connections .bar span").textContent(), `2 / ${demo.connections.limit.toLocaleString("en-US")}`);
    assert.match(await tenant.locator("td.t-requests .bar span").textContent(), /^0 \/ [\d,]+$/);

    // subscriptions: one per client, with the connection's name and the queue group
    const subA = page.locator(`#op-subs tbody tr[data-connection='${conns.find((x) => x.name === "worker-a").id}']`);
    assert.match(await subA.textContent(), /worker-a.*demo.*orders\.>.*billing/);
    const subB = page.locator(`#op-subs tbody tr[data-connection='${conns.find((x) => x.name === "worker-b").id}']`);
    assert.match(await subB.textContent(), /worker-b.*jobs\.>/);
    assert.match(await page.textContent("#op-sub-count"), /^2 from clients · \d+ on the bus$/);

    // the durable consumer: one delivery outstanding against max_inflight 15, one subscriber
    const workers = page.locator("#op-consumers tbody tr[data-consumer='workers']");
    await page.waitForFunction(() => document.querySelector("#op-consumers tr[data-consumer='workers'] td.k-ack span")?.textContent === "1 / 15");
    assert.equal(await workers.locator("td.k-pending").textContent(), "0");
    assert.equal(await workers.locator("td.k-subscribers").textContent(), "1");

    // pause stops the polling; unpausing resumes it
    await page.check("#op-pause");
    const stamp = await page.textContent("#op-updated");
    await page.waitForTimeout(2600);
    assert.equal(await page.textContent("#op-updated"), stamp, "paused: no refresh");
    await page.uncheck("#op-pause");
    await page.waitForFunction((s) => document.querySelector("#op-updated").textContent !== s, stamp);
    await screenshot(page, "operator-tenants-consumers");
  } finally {
    await page.close();
    a.sock.destroy();
    b.sock.destroy();
  }
});

test("Close asks first, then closes a real connection; the client gets CLOSED_BY_ADMIN", async () => {
  const keep = await RawClient.hello(gw.tcp, "keeper");
  const victim = await RawClient.hello(gw.tcp, "victim");
  const page = await openOperator();
  try {
    await connRow(page, "victim").waitFor();
    const id = Number(await connRow(page, "victim").getAttribute("data-id"));

    // dismissing the confirmation closes nothing
    let asked = "";
    page.once("dialog", (d) => { asked = d.message(); d.dismiss(); });
    await connRow(page, "victim").locator("button.close").click();
    await waitUntil("the dialog was answered", () => asked !== "");
    assert.match(asked, new RegExp(`^Close connection ${id} \\(victim, tenant demo, 127\\.0\\.0\\.1:\\d+\\)\\?$`));
    await page.waitForTimeout(500);
    assert.ok(!victim.closed);
    assert.ok((await openConnections()).some((c) => c.id === id));

    // all nodes (?scope=cluster): each row names its node (the memory bus has one), and Close goes
    // to that node; accepting: the gateway closes the connection with ERR CLOSED_BY_ADMIN
    const node = (await adminGet(gw.http, "connections?scope=cluster")).body.connections.find((c) => c.id === id).node ?? "";
    await page.check("#op-cluster");
    await page.waitForSelector(`#op-conns tbody tr[data-name='victim'][data-node='${node}']`);
    if (node) assert.match(await page.textContent("#op-updated"), new RegExp(` · nodes: ${node}$`));
    page.once("dialog", (d) => d.accept());
    const [req] = await Promise.all([
      page.waitForRequest((r) => r.method() === "POST" && r.url().includes("/close")),
      connRow(page, "victim").locator("button.close").click(),
    ]);
    assert.equal(new URL(req.url()).pathname + new URL(req.url()).search,
                 `/admin/connections/${id}/close` + (node ? `?node=${node}` : ""));
    const err = await victim.expect(10);
    assert.equal(err[1], 603, "CLOSED_BY_ADMIN");
    await victim.closedByPeer();
    await page.waitForFunction(() => /^closed connection \d+ \(victim\) at /.test(document.querySelector("#op-action").textContent));
    await connRow(page, "victim").waitFor({ state: "detached" });
    assert.ok(!(await openConnections()).some((c) => c.id === id), "gone from GET /admin/connections");
    assert.equal(await connRow(page, "keeper").count(), 1, "the other connection stays");
    assert.ok(!keep.closed);
    await screenshot(page, "operator-closed");
  } finally {
    await page.close();
    keep.sock.destroy();
    victim.sock.destroy();
  }
});

test("close and refuse sends refuse_for_ms and by; refusals are listed and lifted when the gateway has them", async () => {
  const victim = await RawClient.hello(gw.tcp, "refused-one");
  const page = await openOperator();
  try {
    await connRow(page, "refused-one").waitFor();
    const hasRefusals = (await adminGet(gw.http, "refusals")).status !== 404;
    if (hasRefusals) {
      await page.waitForSelector("#op-refusals-panel:not([hidden])");
    } else {
      await page.waitForSelector("#op-refuse-note:not([hidden])");
      assert.ok(await page.isHidden("#op-refusals-panel"), "no /admin/refusals: no panel");
    }

    await page.check("#op-refuse");
    await page.fill("#op-refuse-s", "30");
    await page.selectOption("#op-refuse-by", "name");
    let asked = "";
    page.once("dialog", (d) => { asked = d.message(); d.accept(); });
    const [req] = await Promise.all([
      page.waitForRequest((r) => r.method() === "POST" && r.url().endsWith("/close")),
      connRow(page, "refused-one").locator("button.close").click(),
    ]);
    assert.match(asked, /\nand refuse that client \(by name\) for 30 s$/);
    assert.deepEqual(req.postDataJSON(), { refuse_for_ms: 30000, by: "name" });
    assert.equal(req.headers()["authorization"], "Bearer " + DEV_ADMIN_TOKEN);
    assert.equal((await victim.expect(10))[1], 603);
    await victim.closedByPeer();
    await page.waitForFunction(() => /and asked to refuse it by name for 30 s/.test(document.querySelector("#op-action").textContent));
    await connRow(page, "refused-one").waitFor({ state: "detached" });
    if (!hasRefusals) { await screenshot(page, "operator-close-refuse"); return; }

    // the refusal is listed; the same client name is refused at HELLO until it is lifted
    const row = page.locator("#op-refusals tbody tr[data-value='refused-one']");
    await row.waitFor();
    assert.equal(await row.locator("td.r-by").textContent(), "name");
    assert.equal(await row.locator("td.r-tenant").textContent(), "demo");
    assert.match(await row.locator("td.r-ms-left").textContent(), /^(30|29|28|27) s$/);
    const again = await RawClient.connect(gw.tcp);
    again.send([1, [1], { method: "token", token: "dev-token" }, "refused-one"]);
    assert.equal((await again.expect(10))[1], 603, "refused at HELLO");
    await again.closedByPeer();
    await screenshot(page, "operator-close-refuse");

    page.once("dialog", (d) => d.accept());
    await row.locator("button.lift").click();
    await row.waitFor({ state: "detached" });
    assert.match(await page.textContent("#op-action"), /^lifted refusal \S+ at /);
    assert.deepEqual((await adminGet(gw.http, "refusals")).body.refusals, []);
    const back = await RawClient.hello(gw.tcp, "refused-one");
    assert.equal(back.welcome[0], 2, "welcome again once lifted");
    back.sock.destroy();
  } finally {
    await page.close();
    victim.sock.destroy();
  }
});

test("admin API errors are shown; a typed token works; Forget drops it", async () => {
  const page = await openOperator("#admin=wrong-token");
  try {
    await page.waitForSelector("#op-error:not([hidden])");
    const text = await page.textContent("#op-error");
    assert.equal(text, "GET /admin/connections, GET /admin/tenants, GET /admin/subscriptions, GET /admin/consumers, GET /admin/refusals: "
                       + "401 Unauthorized: send Authorization: Bearer <admin token> (is the admin token right?)");
    assert.ok(await page.isHidden("#op-refusals-panel"));
    await screenshot(page, "operator-401");

    // the right token, typed in: the errors go, the tables fill
    const c = await RawClient.hello(gw.tcp, "typed-token-check");
    await page.fill("#admin-token", DEV_ADMIN_TOKEN);
    await page.press("#admin-token", "Enter");
    await connRow(page, "typed-token-check").waitFor();
    await page.waitForSelector("#op-error[hidden]", { state: "attached" });
    c.sock.destroy();

    // the client tab and back; then Forget: no operator tab, nothing stored
    await page.click("#tab-client");
    assert.ok(await page.isHidden("#view-operator"));
    await page.click("#tab-operator");
    await page.waitForSelector("#view-operator:not([hidden])");
    await page.click("#admin-forget");
    assert.ok(await page.isHidden("#tab-operator"));
    assert.ok(await page.isVisible("#view-client"));
    assert.equal(await page.evaluate(() => sessionStorage.getItem("busgate.admin-token")), null);
    assert.equal(await page.locator("#op-conns tbody tr").count(), 0, "nothing read with the token stays");
  } finally {
    await page.close();
  }
});
