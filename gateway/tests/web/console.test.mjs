// Browser test of the /debug console: real Chromium (Debian package) driven by playwright-core,
// against the real gateway binary, with a raw TCP client on the other side.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { startGateway, launchBrowser, screenshot, adminGet, RawClient, DEV_TOKEN } from "./harness.mjs";

let gw, tcpAddr, httpAddr, browser;

before(async () => {
  gw = await startGateway();
  tcpAddr = gw.tcp;
  httpAddr = gw.http;
  browser = await launchBrowser();
});

after(async () => {
  if (browser) await browser.close();
  if (gw) gw.proc.kill("SIGTERM");
});

// Opens the console with the token in the fragment: it connects on load.
async function openConsole(hash = `#token=${DEV_TOKEN}`) {
  const page = await browser.newPage({ viewport: { width: 1400, height: 900 } });
  await page.goto(`http://${httpAddr}/debug${hash}`);
  assert.equal(await page.title(), "busgate console");
  assert.equal(await page.inputValue("#url"), `ws://${httpAddr}/v1/ws`);
  await page.waitForSelector("#status.open");
  assert.match(await page.textContent("#welcome"), /tenant demo/);
  return page;
}

// Waits until the frame inspector shows a frame sent ("out") or received ("in") whose JSON starts
// with `prefix`; returns the inspector's text for it.
async function frameLogged(page, dir, prefix, timeout = 5000) {
  const handle = await page.waitForFunction(([dir, prefix]) => {
    for (const tr of document.querySelectorAll(`#frames tbody tr[data-dir='${dir}']`))
      if (tr.cells[3].textContent.startsWith(prefix)) return tr.cells[3].textContent;
    return null;
  }, [dir, prefix], { timeout });
  return handle.jsonValue();
}

async function framesLogged(page, dir, prefix) {
  return page.evaluate(([dir, prefix]) => Array.from(document.querySelectorAll(`#frames tbody tr[data-dir='${dir}']`))
    .map((tr) => tr.cells[3].textContent).filter((t) => t.startsWith(prefix)), [dir, prefix]);
}

test("the console subscribes, shows live messages, sends requests and inspects frames", async () => {
  const page = await openConsole();

  // subscribe in the page, publish from a TCP client, see the message
  await page.fill("#sub-subject", "orders.>");
  await page.click("#subscribe");
  await page.waitForSelector("#frames tr[data-op='9']");  // OK for the SUB
  const tcp = await RawClient.connect(tcpAddr);
  tcp.send([1, [1], { method: "token", token: "dev-token" }, "tcp-peer"]);
  await tcp.expect(2);
  tcp.send([3, "orders.created", Buffer.from("hello from tcp"), { "trace-id": "t-1" }]);
  const row = page.locator("#messages tr[data-subject='orders.created']");
  await row.waitFor();
  assert.equal(await row.locator(".payload").textContent(), "hello from tcp");
  assert.match(await row.textContent(), /"busgate-tenant":"demo"/);
  assert.equal(await page.textContent("#subs tbody tr td:nth-child(3)"), "1");

  // a request from the page, answered by the TCP client
  tcp.send([4, 1, "svc.echo"]);
  await tcp.expect(9);
  await page.fill("#req-subject", "svc.echo");
  await page.fill("#req-payload", "ping");
  await page.click("#request");
  const req = await tcp.expect(6);
  assert.equal(Buffer.from(req[3]).toString(), "ping");
  tcp.send([3, req[5], Buffer.from("pong: " + Buffer.from(req[3]).toString())]);
  await page.waitForFunction(() => document.querySelector("#req-result").textContent.includes("pong: ping"));
  assert.match(await page.textContent("#req-result"), /reply to #1 in [\d.]+ ms/);

  // an error shows its name
  await page.fill("#req-subject", "nobody.listens");
  await page.click("#request");
  await page.waitForFunction(() => document.querySelector("#req-result").textContent.includes("NO_RESPONDERS"));

  // the frame inspector has every frame, both directions, as JSON
  const frames = await page.locator("#frames tbody tr").allTextContents();
  for (const op of ["HELLO", "WELCOME", "SUB", "OK", "MSG", "REQ", "RES"])
    assert.ok(frames.some((t) => t.includes(op)), `inspector shows ${op}`);

  await screenshot(page, "console");
  tcp.sock.destroy();
});

// The --dev default has a stream `jobs` storing jobs.> and a declared consumer `workers` on jobs.>.
test("the console consumes a durable subscription: delivery id and attempt, Nak redelivers, Ack ends it", async () => {
  const page = await openConsole();
  try {
    await page.fill("#sub-subject", "jobs.>");
    await page.fill("#sub-durable", "workers");
    await page.click("#subscribe");
    await frameLogged(page, "out", '[4,1,"jobs.>",null,{"durable":"workers"}]');
    await frameLogged(page, "in", "[9,4,1]");
    assert.match(await page.textContent("#subs tbody tr"), /durable workers/);

    // publish from the page, asking for an ack and giving a msg_id: OK once stored
    await page.fill("#pub-subject", "jobs.x");
    await page.fill("#pub-payload", "resize img-1");
    assert.ok(await page.isChecked("#pub-ack"));
    await page.fill("#pub-msgid", "img-1");
    await page.click("#publish");
    await frameLogged(page, "out", '[3,"jobs.x","resize img-1",null,null,1,"img-1"]');
    await frameLogged(page, "in", "[9,3,1]");
    await page.waitForFunction(() => document.querySelector("#pub-result").textContent === "published jobs.x (msg_id img-1)");

    // the delivery: id 1, attempt 1, with its buttons
    const first = page.locator("#messages tr[data-sid='1'][data-delivery='1']");
    await first.waitFor();
    assert.equal(await first.getAttribute("data-attempt"), "1");
    assert.equal(await first.getAttribute("data-subject"), "jobs.x");
    assert.equal(await first.locator(".payload").textContent(), "resize img-1");
    assert.match(await first.locator("td.delivery").textContent(), /#1 · attempt 1/);
    const msg1 = await frameLogged(page, "in", '[6,1,"jobs.x","resize img-1",');
    assert.match(msg1, /,null,1,1\]$/, "MSG fields 6 and 7: delivery id 1, attempt 1");
    await screenshot(page, "console-durable-delivered");

    // Nak: the same message comes back as delivery 2, attempt 2
    await first.locator("button.nak").click();
    await frameLogged(page, "out", "[15,1,1]");
    const second = page.locator("#messages tr[data-sid='1'][data-delivery='2']");
    await second.waitFor();
    assert.equal(await second.getAttribute("data-attempt"), "2");
    assert.equal(await second.locator(".payload").textContent(), "resize img-1");
    assert.match(await second.locator("td.delivery").textContent(), /#2 · attempt 2/);
    await page.waitForSelector("#messages tr[data-delivery='1'][data-state='nakked']");
    assert.match(await first.locator(".outcome").textContent(), /^nakked at /);

    // In progress is accepted (no ERR); Ack settles the delivery
    await second.locator("button.progress").click();
    await frameLogged(page, "out", "[17,1,2]");
    await page.waitForFunction(() => /^in progress/.test(document.querySelector("#messages tr[data-delivery='2'] .outcome").textContent));
    await second.locator("button.ack").click();
    await frameLogged(page, "out", "[14,1,2]");
    await page.waitForSelector("#messages tr[data-delivery='2'][data-state='acked']");
    assert.match(await second.locator(".outcome").textContent(), /^acked at /);
    assert.deepEqual(await framesLogged(page, "in", "[10,"), [], "no ERR so far");

    // a second Ack: the delivery is no longer outstanding, the gateway says so and the row shows it
    await second.locator("button.ack").click();
    const err = await frameLogged(page, "in", "[10,310,");
    assert.match(err, /,14,1\]\s+\(UNKNOWN_DELIVERY\)$/);
    await page.waitForFunction(() => document.querySelector("#messages tr[data-delivery='2'] .outcome").textContent.startsWith("ACK: UNKNOWN_DELIVERY"));
    assert.equal(await page.getAttribute("#messages tr[data-delivery='2'] .outcome", "class"), "outcome errtext");
    await screenshot(page, "console-durable-acked");

    // nothing more arrives: not now, nor after the subscription ends and a new one binds to the
    // consumer (an unacknowledged delivery would be released and redelivered at once)
    await page.waitForTimeout(1500);
    assert.equal(await page.locator("#messages tbody tr").count(), 2);
    await page.click("#subs tbody tr button[title='unsubscribe']");
    await frameLogged(page, "out", "[5,1]");
    await page.click("#subscribe");
    await frameLogged(page, "in", "[9,4,2]");
    await page.waitForTimeout(1500);
    assert.equal(await page.locator("#messages tbody tr").count(), 2);
    const msgs = (await framesLogged(page, "in", "[6,")).reverse();  // the inspector lists newest first
    assert.equal(msgs.length, 2, "exactly two MSG frames: " + msgs.join(" | "));
    assert.match(msgs[0], /^\[6,1,"jobs\.x","resize img-1",.*,null,1,1\]$/);
    assert.match(msgs[1], /^\[6,1,"jobs\.x","resize img-1",.*,null,2,2\]$/);
    assert.equal(await page.textContent("#subs tbody tr td:nth-child(3)"), "0");
    assert.ok(await first.locator("button.ack").isDisabled(), "the ended subscription's rows lose their buttons");
  } finally {
    await page.close();
  }
});

test("the console terminates a delivery and reads the dead letter through a credit-flow subscription", async () => {
  const page = await openConsole();
  try {
    await page.fill("#sub-subject", "jobs.>");
    await page.fill("#sub-durable", "workers");
    await page.click("#subscribe");
    await frameLogged(page, "in", "[9,4,1]");
    await page.fill("#pub-subject", "jobs.broken");
    await page.fill("#pub-payload", "bad input");
    await page.click("#publish");
    await frameLogged(page, "in", "[9,3,1]");
    const job = page.locator("#messages tr[data-sid='1'][data-subject='jobs.broken']");
    await job.waitFor();
    assert.equal(await job.getAttribute("data-attempt"), "1");
    const id = Number(await job.getAttribute("data-delivery"));
    assert.ok(id >= 1);

    // Term asks for a reason, sends it in TERM field 3
    page.once("dialog", (d) => d.accept("corrupt image"));
    await job.locator("button.term").click();
    await frameLogged(page, "out", `[18,1,${id},"corrupt image"]`);
    await page.waitForSelector(`#messages tr[data-delivery='${id}'][data-state='termed']`);

    // the dead letter, through a client-created consumer with credit flow: nothing until Credit
    await page.fill("#sub-subject", "deadletter.workers");
    await page.fill("#sub-durable", "console-dead");
    await page.fill("#sub-inflight", "5");
    await page.check("#sub-credit");
    await page.click("#subscribe");
    await frameLogged(page, "out", '[4,2,"deadletter.workers",null,{"durable":"console-dead","max_inflight":5,"flow":"credit"}]');
    await frameLogged(page, "in", "[9,4,2]");
    const subRow = page.locator("#subs tbody tr[data-sid='2']");
    assert.match(await subRow.textContent(), /durable console-dead.*max_inflight 5.*credit flow.*credits left 0/);
    await page.waitForTimeout(1000);
    assert.equal(await page.locator("#messages tr[data-sid='2']").count(), 0, "no MSG before credits are granted");

    await subRow.locator("input.credit-n").fill("1");
    await subRow.locator("button.credit").click();
    await frameLogged(page, "out", "[16,2,1]");
    const dead = page.locator("#messages tr[data-sid='2'][data-delivery='1']");
    await dead.waitFor();
    assert.equal(await dead.getAttribute("data-subject"), "deadletter.workers");
    assert.equal(await dead.getAttribute("data-attempt"), "1");
    assert.equal(await dead.locator(".payload").textContent(), "bad input");
    const headers = JSON.parse(await dead.locator("td:nth-child(5)").textContent());
    assert.equal(headers["busgate-dead-reason"], "terminated: corrupt image");
    assert.equal(headers["busgate-subject"], "jobs.broken");
    assert.equal(headers["busgate-consumer"], "workers");
    assert.match(await subRow.textContent(), /credits left 0/);
    await dead.locator("button.ack").click();
    await page.waitForSelector("#messages tr[data-sid='2'][data-delivery='1'][data-state='acked']");
    assert.deepEqual(await framesLogged(page, "in", "[10,"), [], "no ERR");
    await screenshot(page, "console-durable-dead-letter");

    // a reconnect: the old connection's delivery ids mean nothing any more, so their buttons go;
    // the subscriptions are made again with their options, credits start from zero
    await page.click("#disconnect");
    await page.waitForSelector("#status.closed");
    assert.ok(await dead.locator("button.ack").isDisabled());
    assert.ok(await job.locator("button.nak").isDisabled());
    await page.click("#frame-clear");
    await page.click("#connect");
    await page.waitForSelector("#status.open");
    await frameLogged(page, "out", '[4,1,"jobs.>",null,{"durable":"workers"}]');
    await frameLogged(page, "out", '[4,2,"deadletter.workers",null,{"durable":"console-dead","max_inflight":5,"flow":"credit"}]');
    await frameLogged(page, "in", "[9,4,2]");
    assert.match(await subRow.textContent(), /credits left 0/);
  } finally {
    await page.close();
  }
});

test("a token in the address connects on load, from the fragment or the query", async () => {
  for (const [hash, name] of [[`#token=${DEV_TOKEN}&name=from-fragment`, "from-fragment"], [`?token=${DEV_TOKEN}&name=from-query`, "from-query"]]) {
    const page = await openConsole(hash);  // waits for #status.open: nothing was clicked
    try {
      assert.equal(await page.inputValue("#token"), DEV_TOKEN);
      assert.equal(await page.inputValue("#name"), name);
      assert.ok(await page.isDisabled("#connect"), "connected: Connect is disabled");
      await frameLogged(page, "out", `[1,[1],{"method":"token","token":"${DEV_TOKEN}"},"${name}"`);
      const { body } = await adminGet(httpAddr, "connections");
      assert.ok(body.connections.some((c) => c.name === name && c.tenant === "demo" && c.transport.startsWith("ws")),
                `the gateway lists the console's connection ${name}: ${JSON.stringify(body.connections)}`);
      assert.equal(await page.isHidden("#tab-operator"), true, "no admin token, no operator view");
      await screenshot(page, "console-url-token-" + name);
    } finally {
      await page.close();
    }
  }
});

// Subscribes the page to `subject`, publishes `payload` (bytes) from a raw TCP client, returns the row.
async function deliver(page, subject, payload) {
  const sid = await page.evaluate("nextSid");
  await page.fill("#sub-subject", subject);
  await page.click("#subscribe");
  await frameLogged(page, "in", `[9,4,${sid}]`);
  const tcp = await RawClient.hello(tcpAddr, "payload-sender");
  tcp.send([3, subject, payload]);
  const row = page.locator(`#messages tr[data-subject='${subject}']`);
  await row.waitFor();
  tcp.sock.destroy();
  return row;
}

test("a binary payload shows as a hex dump of its bytes", async () => {
  const page = await openConsole();
  try {
    const bytes = Buffer.from([0xff, 0xfe, 0x00, 0x01, 0x41, 0x42, 0x43, 0x0a, 0x80, 0x7f, 0x20, 0x7e, 0x68, 0x69, 0x21, 0x00, 0x01, 0x02]);
    const row = await deliver(page, "blobs.raw", bytes);
    // over busgate.v1.json the gateway sent it as base64 (docs/protocol.md section 4)
    await frameLogged(page, "in", `[6,1,"blobs.raw",{"base64":"${bytes.toString("base64")}"}`);
    const payload = row.locator(".payload");
    assert.equal(await payload.getAttribute("data-view"), "hex", "not UTF-8: hex by default");
    const lines = (await payload.textContent()).split("\n");
    assert.deepEqual(lines, [
      "00000000  ff fe 00 01 41 42 43 0a  80 7f 20 7e 68 69 21 00  |....ABC... ~hi!.|",
      "00000010  01 02" + " ".repeat(18) + "  " + " ".repeat(23) + "  |..|",
    ]);
    assert.match(await row.locator(".psize").textContent(), /^18 B · not UTF-8$/);
    assert.ok(await row.locator("button.pv-json").isDisabled(), "not JSON");
    await screenshot(page, "console-payload-hex");
    await row.locator("button.pv-utf8").click();
    assert.equal(await payload.getAttribute("data-view"), "utf8");
    assert.equal(await payload.textContent(), new TextDecoder().decode(bytes), "UTF-8 view: invalid bytes as U+FFFD");
    await row.locator("button.pv-hex").click();
    assert.match(await payload.textContent(), /^00000000  ff fe 00 01/);
  } finally {
    await page.close();
  }
});

test("a JSON payload is pretty-printed, keeping its literals; text stays text", async () => {
  const page = await openConsole();
  try {
    const text = '{"order":{"id":12345678901234567890,"price":1.50,"note":"a \\"{x}\\", [y]","items":["a","b"],"meta":{},"tags":[]}}';
    JSON.parse(text);  // valid JSON
    const row = await deliver(page, "orders.json", Buffer.from(text));
    const payload = row.locator(".payload");
    assert.equal(await payload.getAttribute("data-view"), "json", "an object: JSON view by default");
    assert.equal(await payload.textContent(), [
      "{",
      '  "order": {',
      '    "id": 12345678901234567890,',
      '    "price": 1.50,',
      '    "note": "a \\"{x}\\", [y]",',
      '    "items": [',
      '      "a",',
      '      "b"',
      "    ],",
      '    "meta": {},',
      '    "tags": []',
      "  }",
      "}",
    ].join("\n"));
    await screenshot(page, "console-payload-json");
    await row.locator("button.pv-utf8").click();
    assert.equal(await payload.textContent(), text, "the UTF-8 view is the payload as sent");
    await row.locator("button.pv-hex").click();
    assert.match(await payload.textContent(), /^00000000  7b 22 6f 72 64 65 72 22  3a 7b 22 69 64 22 3a 31  \|\{"order":\{"id":1\|/);

    // plain text: the UTF-8 view, no JSON view
    const plain = await deliver(page, "orders.text", Buffer.from("just {text}"));
    assert.equal(await plain.locator(".payload").getAttribute("data-view"), "utf8");
    assert.equal(await plain.locator(".payload").textContent(), "just {text}");
    assert.ok(await plain.locator("button.pv-json").isDisabled());
    // the message filter matches the payload text, not the view buttons
    await page.fill("#msg-filter", "hex");
    assert.equal(await page.locator("#messages tbody tr:visible").count(), 0);
    await page.fill("#msg-filter", "12345678901234567890");
    assert.equal(await page.locator("#messages tbody tr:visible").count(), 1);
  } finally {
    await page.close();
  }
});
