// Browser test of the /debug console: real Chromium (Debian package) driven by playwright-core,
// against the real gateway binary, with a raw TCP client on the other side.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import net from "node:net";
import fs from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { encode, decode } from "@msgpack/msgpack";
import { chromium } from "playwright-core";

const here = path.dirname(fileURLToPath(import.meta.url));
const root = path.resolve(here, "../../..");
const BIN = process.env.BUSGATE_BIN || path.join(root, "build/bin/busgate");
const OUT = process.env.BUSGATE_TEST_OUTPUT || path.join(root, "build/test-output");

let gw, tcpAddr, httpAddr, browser;

function startGateway() {
  return new Promise((resolve, reject) => {
    const p = spawn(BIN, ["--tcp", "127.0.0.1:0", "--http", "127.0.0.1:0", "--threads", "2"], { stdio: ["ignore", "ignore", "pipe"] });
    let log = "";
    const timer = setTimeout(() => reject(new Error("gateway did not start:\n" + log)), 15000);
    p.stderr.on("data", (d) => {
      log += d.toString();
      const tcp = log.match(/tcp listening on ([\d.]+):(\d+)/);
      const http = log.match(/http listening on ([\d.]+):(\d+)/);
      if (tcp && http && log.includes("ready (bus:")) {
        clearTimeout(timer);
        tcpAddr = { host: tcp[1], port: Number(tcp[2]) };
        httpAddr = `${http[1]}:${http[2]}`;
        resolve(p);
      }
    });
    p.on("exit", (code) => reject(new Error(`gateway exited ${code}:\n${log}`)));
  });
}

// A raw busgate TCP client: length-prefixed msgpack frames.
class RawClient {
  constructor(sock) { this.sock = sock; this.buf = Buffer.alloc(0); this.frames = []; this.waiters = []; }
  static connect(addr) {
    return new Promise((resolve, reject) => {
      const sock = net.connect(addr, () => resolve(c));
      const c = new RawClient(sock);
      sock.on("error", reject);
      sock.on("data", (d) => c.onData(d));
    });
  }
  onData(d) {
    this.buf = Buffer.concat([this.buf, d]);
    while (this.buf.length >= 4) {
      const n = this.buf.readUInt32BE(0);
      if (this.buf.length < 4 + n) break;
      const frame = decode(this.buf.subarray(4, 4 + n));
      this.buf = this.buf.subarray(4 + n);
      if (frame[0] === 11) { this.send([12]); continue; }  // PING -> PONG
      this.frames.push(frame);
      this.waiters.splice(0).forEach((w) => w());
    }
  }
  send(frame) {
    const body = Buffer.from(encode(frame));
    const head = Buffer.alloc(4);
    head.writeUInt32BE(body.length);
    this.sock.write(Buffer.concat([head, body]));
  }
  async expect(op, timeoutMs = 5000) {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const i = this.frames.findIndex((f) => f[0] === op);
      if (i >= 0) return this.frames.splice(i, 1)[0];
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`no frame with op ${op}; have ${JSON.stringify(this.frames)}`);
      await new Promise((r) => { this.waiters.push(r); setTimeout(r, left); });
    }
  }
}

before(async () => {
  gw = await startGateway();
  browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-quic",
           "--no-first-run", "--disable-component-update", "--disable-sync"],
  });
});

after(async () => {
  if (browser) await browser.close();
  if (gw) gw.kill("SIGTERM");
});

test("the console subscribes, shows live messages, sends requests and inspects frames", async () => {
  const page = await browser.newPage({ viewport: { width: 1400, height: 900 } });
  await page.goto(`http://${httpAddr}/debug?token=dev-token`);
  assert.equal(await page.title(), "busgate console");
  assert.equal(await page.inputValue("#url"), `ws://${httpAddr}/v1/ws`);
  await page.click("#connect");
  await page.waitForSelector("#status.open");
  assert.match(await page.textContent("#welcome"), /tenant demo/);

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
  assert.equal(await row.locator("td.payload").textContent(), "hello from tcp");
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

  fs.mkdirSync(OUT, { recursive: true });
  await page.screenshot({ path: path.join(OUT, "console.png"), fullPage: true });
  tcp.sock.destroy();
});
