// Headless Chromium driven over the DevTools protocol on a pipe (--remote-debugging-pipe): no npm dependency, no port.
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Readable, Writable } from 'node:stream';

/* eslint-disable @typescript-eslint/no-explicit-any -- protocol messages are untyped JSON */

/** The Chromium binary on PATH (Debian's `chromium`), or null. */
export function findChromium(): string | null {
  for (const name of ['chromium', 'chromium-browser']) {
    const r = spawnSync('sh', ['-c', `command -v ${name}`], { encoding: 'utf8' });
    if (r.status === 0 && r.stdout.trim()) return r.stdout.trim();
  }
  return null;
}

export interface CdpEvent {
  method: string;
  params: any;
  sessionId?: string;
}

interface Pending {
  method: string;
  resolve: (v: any) => void;
  reject: (e: Error) => void;
  timer: NodeJS.Timeout;
}

interface Waiter {
  match: (e: CdpEvent) => boolean;
  resolve: (e: CdpEvent) => void;
}

const live = new Set<ChildProcess>();
process.on('exit', () => {
  for (const p of live) killGroup(p);
});

/** SIGKILLs the process group Chromium leads (it was spawned detached): its renderer and GPU helpers go with it. */
function killGroup(p: ChildProcess): void {
  if (p.pid === undefined) return;
  try {
    process.kill(-p.pid, 'SIGKILL');
  } catch {
    // ESRCH: the whole group is gone already.
  }
}

export interface LaunchOptions {
  binary?: string;
  /** Deadline for each protocol command. */
  commandTimeoutMs?: number;
  extraArgs?: string[];
}

/** One headless Chromium process and its protocol pipe. */
export class Chromium {
  private nextId = 1;
  private readonly pending = new Map<number, Pending>();
  private readonly waiters = new Set<Waiter>();
  private readonly listeners = new Set<(e: CdpEvent) => void>();
  private buffer: Buffer = Buffer.alloc(0);
  private stderr = '';
  private exited: Promise<void>;
  private closed = false;

  private constructor(
    private readonly proc: ChildProcess,
    private readonly userDataDir: string,
    private readonly commandTimeoutMs: number,
  ) {
    const toBrowser = proc.stdio[3] as Writable;
    const fromBrowser = proc.stdio[4] as Readable;
    toBrowser.on('error', () => {});
    fromBrowser.on('data', (chunk: Buffer) => this.onData(chunk));
    proc.stderr?.on('data', (chunk: Buffer) => {
      // Keep the tail only: enough to explain a crash.
      this.stderr = (this.stderr + chunk.toString('utf8')).slice(-8000);
    });
    proc.stdout?.resume();
    this.exited = new Promise((resolve) => proc.once('exit', () => resolve()));
    proc.once('exit', (code, signal) => {
      live.delete(proc);
      const err = new Error(`chromium exited (code ${code}, signal ${signal}) with commands pending; stderr tail:\n${this.stderr}`);
      for (const p of this.pending.values()) {
        clearTimeout(p.timer);
        p.reject(err);
      }
      this.pending.clear();
    });
  }

  /** Starts Chromium with a fresh profile and waits until it answers on the pipe. */
  static async launch(opts: LaunchOptions = {}): Promise<Chromium> {
    const binary = opts.binary ?? findChromium();
    if (!binary) throw new Error('chromium is not installed');
    const userDataDir = mkdtempSync(join(tmpdir(), 'chromium-profile-'));
    const args = [
      '--headless',
      '--no-sandbox',
      '--disable-gpu',
      '--no-first-run',
      '--no-default-browser-check',
      '--disable-dev-shm-usage',
      '--disable-extensions',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
      '--mute-audio',
      // Nothing may leave the machine even if a page tried.
      '--host-resolver-rules=MAP * ~NOTFOUND',
      '--remote-debugging-pipe',
      `--user-data-dir=${userDataDir}`,
      ...(opts.extraArgs ?? []),
      'about:blank',
    ];
    const proc = spawn(binary, args, { stdio: ['ignore', 'pipe', 'pipe', 'pipe', 'pipe'], detached: true });
    live.add(proc);
    const browser = new Chromium(proc, userDataDir, opts.commandTimeoutMs ?? 20_000);
    const spawned = new Promise<void>((resolve, reject) => {
      proc.once('spawn', () => resolve());
      proc.once('error', (e) => reject(e));
    });
    try {
      await spawned;
      await browser.send('Browser.getVersion');
    } catch (e) {
      await browser.close();
      throw e;
    }
    return browser;
  }

  private onData(chunk: Buffer): void {
    this.buffer = this.buffer.length ? Buffer.concat([this.buffer, chunk]) : chunk;
    for (;;) {
      const end = this.buffer.indexOf(0);
      if (end < 0) return;
      const text = this.buffer.subarray(0, end).toString('utf8');
      this.buffer = this.buffer.subarray(end + 1);
      let msg: any;
      try {
        msg = JSON.parse(text);
      } catch {
        continue;
      }
      if (typeof msg.id === 'number') {
        const p = this.pending.get(msg.id);
        if (!p) continue;
        this.pending.delete(msg.id);
        clearTimeout(p.timer);
        if (msg.error) p.reject(new Error(`${p.method}: ${msg.error.message ?? JSON.stringify(msg.error)}`));
        else p.resolve(msg.result ?? {});
      } else if (typeof msg.method === 'string') {
        const event: CdpEvent = { method: msg.method, params: msg.params ?? {}, sessionId: msg.sessionId };
        for (const l of this.listeners) l(event);
        for (const w of [...this.waiters]) {
          if (w.match(event)) {
            this.waiters.delete(w);
            w.resolve(event);
          }
        }
      }
    }
  }

  /** Sends one command (to the browser, or to a page when `sessionId` is given) and awaits its result. */
  send(method: string, params: Record<string, unknown> = {}, sessionId?: string): Promise<any> {
    if (this.closed) return Promise.reject(new Error(`${method}: chromium is closed`));
    const id = this.nextId++;
    const message = JSON.stringify(sessionId ? { id, method, params, sessionId } : { id, method, params });
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(new Error(`${method}: no answer within ${this.commandTimeoutMs} ms; chromium stderr tail:\n${this.stderr}`));
      }, this.commandTimeoutMs);
      this.pending.set(id, { method, resolve, reject, timer });
      (this.proc.stdio[3] as Writable).write(`${message}\0`);
    });
  }

  /** Calls `listener` for every event from now on; returns the unsubscribe function. */
  onEvent(listener: (e: CdpEvent) => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  /** The next event named `method` (on `sessionId`, if given) that satisfies `match`; register before triggering it. */
  waitForEvent(method: string, opts: { sessionId?: string; match?: (e: CdpEvent) => boolean; timeoutMs?: number } = {}): Promise<CdpEvent> {
    return new Promise((resolve, reject) => {
      const waiter: Waiter = {
        match: (e) => e.method === method && (opts.sessionId === undefined || e.sessionId === opts.sessionId) && (opts.match?.(e) ?? true),
        resolve: (e) => {
          clearTimeout(timer);
          resolve(e);
        },
      };
      const timer = setTimeout(() => {
        this.waiters.delete(waiter);
        reject(new Error(`no ${method} event within ${opts.timeoutMs ?? 20_000} ms`));
      }, opts.timeoutMs ?? 20_000);
      this.waiters.add(waiter);
    });
  }

  /** A new tab with a flattened session attached. */
  async newPage(): Promise<{ targetId: string; sessionId: string }> {
    const { targetId } = await this.send('Target.createTarget', { url: 'about:blank' });
    const { sessionId } = await this.send('Target.attachToTarget', { targetId, flatten: true });
    return { targetId, sessionId };
  }

  /** Closes the browser (politely, then SIGKILL after a deadline) and removes its profile directory. */
  async close(): Promise<void> {
    if (!this.closed) {
      this.closed = true;
      if (this.proc.pid !== undefined && this.proc.exitCode === null && this.proc.signalCode === null) {
        const id = this.nextId++;
        try {
          (this.proc.stdio[3] as Writable).write(`${JSON.stringify({ id, method: 'Browser.close', params: {} })}\0`);
        } catch {
          // The pipe is gone: the kill below handles it.
        }
        const deadline = new Promise<'timeout'>((resolve) => setTimeout(() => resolve('timeout'), 5000).unref());
        if ((await Promise.race([this.exited.then(() => 'exited' as const), deadline])) === 'timeout') {
          killGroup(this.proc);
          await Promise.race([this.exited, new Promise((resolve) => setTimeout(resolve, 5000).unref())]);
        }
      }
      // Helpers that outlived the main process (normally none: it stops them on the way out).
      killGroup(this.proc);
      live.delete(this.proc);
    }
    rmSync(this.userDataDir, { recursive: true, force: true, maxRetries: 5, retryDelay: 100 });
  }
}

/** A loaded tab: raw protocol commands and evaluation in the page. */
export interface PageSession {
  sessionId: string;
  send(method: string, params?: Record<string, unknown>): Promise<any>;
  /** Evaluates `expression` after the next animation frame (layout and paint done); a promise is awaited, the value must be JSON. */
  evaluate(expression: string): Promise<any>;
}

/** What loading one page produced. */
export interface PageCheck<T> {
  /** Runtime.consoleAPICalled of type error, warning or assert, and Log.entryAdded of level error. */
  consoleErrors: string[];
  /** Runtime.exceptionThrown. */
  exceptions: string[];
  /** Network.requestWillBeSent for anything but a file: URL. */
  networkRequests: string[];
  /** What `inspect` returned. */
  value: T;
}

/**
 * Opens `url` in a new tab, recording console errors, uncaught exceptions and non-file requests from
 * before navigation until the tab closes; waits for the load event (with a deadline), runs `inspect`,
 * then closes the tab.
 */
export async function checkPage<T>(browser: Chromium, url: string, inspect: (page: PageSession) => Promise<T>, opts: { loadTimeoutMs?: number } = {}): Promise<PageCheck<T>> {
  const { targetId, sessionId } = await browser.newPage();
  const check: PageCheck<T> = { consoleErrors: [], exceptions: [], networkRequests: [], value: undefined as T };
  const stop = browser.onEvent((e) => {
    if (e.sessionId !== sessionId) return;
    if (e.method === 'Runtime.consoleAPICalled' && ['error', 'warning', 'assert'].includes(e.params.type)) {
      check.consoleErrors.push(`console.${e.params.type}: ${(e.params.args ?? []).map((a: any) => a.value ?? a.description ?? a.type).join(' ')}`);
    } else if (e.method === 'Log.entryAdded' && e.params.entry?.level === 'error') {
      check.consoleErrors.push(`log ${e.params.entry.source}: ${e.params.entry.text}${e.params.entry.url ? ` (${e.params.entry.url})` : ''}`);
    } else if (e.method === 'Runtime.exceptionThrown') {
      const d = e.params.exceptionDetails ?? {};
      check.exceptions.push(`${d.text ?? 'exception'}: ${d.exception?.description ?? ''}`);
    } else if (e.method === 'Network.requestWillBeSent') {
      const u = String(e.params.request?.url ?? '');
      if (!u.startsWith('file:')) check.networkRequests.push(u);
    }
  });
  const page: PageSession = {
    sessionId,
    send: (method, params = {}) => browser.send(method, params, sessionId),
    evaluate: async (expression) => {
      const res = await browser.send(
        'Runtime.evaluate',
        { expression: `new Promise((resolve) => requestAnimationFrame(() => resolve((${expression}))))`, awaitPromise: true, returnByValue: true },
        sessionId,
      );
      if (res.exceptionDetails) throw new Error(`evaluating in the page: ${res.exceptionDetails.exception?.description ?? res.exceptionDetails.text}`);
      return res.result?.value;
    },
  };
  try {
    await Promise.all(['Page.enable', 'Runtime.enable', 'Log.enable', 'Network.enable'].map((m) => page.send(m)));
    const loaded = browser.waitForEvent('Page.loadEventFired', { sessionId, timeoutMs: opts.loadTimeoutMs ?? 30_000 });
    // Awaited below; this only keeps a failed navigation from leaving it unhandled.
    loaded.catch(() => undefined);
    const nav = await page.send('Page.navigate', { url });
    if (nav.errorText) throw new Error(`navigating to ${url}: ${nav.errorText}`);
    await loaded;
    check.value = await inspect(page);
    return check;
  } finally {
    stop();
    await browser.send('Target.closeTarget', { targetId }).catch(() => undefined);
  }
}
