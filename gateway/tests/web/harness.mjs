// Shared by the browser tests of the /debug console: the real gateway binary, a raw TCP client,
// Debian's Chromium driven by playwright-core, and the screenshot folder.
import { spawn } from "node:child_process";
import net from "node:net";
import fs from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { encode, decode } from "@msgpack/msgpack";
import { chromium } from "playwright-core";

const here = path.dirname(fileURLToPath(import.meta.url));
const root = path.resolve(here, "../../..");
export const BIN = process.env.BUSGATE_BIN || path.join(root, "build/bin/busgate");
// Screenshots: $BUSGATE_TEST_OUTPUT/console (ctest sets it to <build>/test-output), otherwise
// <build>/test-output/console next to the binary under test.
export const OUT = path.join(process.env.BUSGATE_TEST_OUTPUT || path.resolve(path.dirname(BIN), "../test-output"), "console");
export const DEV_TOKEN = "dev-token";
export const DEV_ADMIN_TOKEN = "dev-admin-token";

// Starts `busgate --tcp 127.0.0.1:0 --http 127.0.0.1:0` (plus `extraArgs`) and learns its ports from
// the log. Resolves to {proc, tcp: {host, port}, http: "host:port"}.
export function startGateway(extraArgs = []) {
  return new Promise((resolve, reject) => {
    const proc = spawn(BIN, ["--tcp", "127.0.0.1:0", "--http", "127.0.0.1:0", "--threads", "2", ...extraArgs],
                       { stdio: ["ignore", "ignore", "pipe"] });
    let log = "";
    const timer = setTimeout(() => reject(new Error("gateway did not start:\n" + log)), 15000);
    proc.stderr.on("data", (d) => {
      log += d.toString();
      const tcp = log.match(/tcp listening on ([\d.]+):(\d+)/);
      const http = log.match(/http listening on ([\d.]+):(\d+)/);
      if (tcp && http && log.includes("ready (bus:")) {
        clearTimeout(timer);
        resolve({ proc, tcp: { host: tcp[1], port: Number(tcp[2]) }, http: `${http[1]}:${http[2]}` });
      }
    });
    proc.on("exit", (code) => reject(new Error(`gateway exited ${code}:\n${log}`)));
  });
}

export function launchBrowser() {
  return chromium.launch({
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-quic",
           "--no-first-run", "--disable-component-update", "--disable-sync"],
  });
}

export async function screenshot(page, name) {
  fs.mkdirSync(OUT, { recursive: true });
  await page.screenshot({ path: path.join(OUT, name + ".png"), fullPage: true });
}

// The admin API from outside the browser, to check what the page shows against the gateway.
export async function adminGet(http, what, token = DEV_ADMIN_TOKEN) {
  const res = await fetch(`http://${http}/admin/${what}`, { headers: { Authorization: "Bearer " + token } });
  return { status: res.status, body: await res.json() };
}

// A raw busgate TCP client: length-prefixed msgpack frames; answers PING.
export class RawClient {
  constructor(sock) { this.sock = sock; this.buf = Buffer.alloc(0); this.frames = []; this.waiters = []; this.closed = false; }
  static connect(addr) {
    return new Promise((resolve, reject) => {
      const sock = net.connect(addr, () => resolve(c));
      const c = new RawClient(sock);
      sock.on("error", reject);
      sock.on("data", (d) => c.onData(d));
      sock.on("close", () => { c.closed = true; c.waiters.splice(0).forEach((w) => w()); });
    });
  }
  // Connects and completes HELLO/WELCOME with the given name; resolves once WELCOME arrived.
  static async hello(addr, name, token = DEV_TOKEN) {
    const c = await RawClient.connect(addr);
    c.send([1, [1], { method: "token", token }, name]);
    c.welcome = await c.expect(2);
    return c;
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
  // Resolves once the gateway closed the socket.
  async closedByPeer(timeoutMs = 5000) {
    const deadline = Date.now() + timeoutMs;
    while (!this.closed) {
      const left = deadline - Date.now();
      if (left <= 0) throw new Error("the connection is still open");
      await new Promise((r) => { this.waiters.push(r); setTimeout(r, left); });
    }
  }
}
