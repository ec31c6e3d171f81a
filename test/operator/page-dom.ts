import vm from 'node:vm';
import { dashboardPage } from '../../operator/dashboard-page.ts';

/** Just enough DOM to run the dashboard page's script in node (no browser in CI). */
export class El {
  children: El[] = [];
  textContent = '';
  className = '';
  title = '';
  value = '';
  checked = false;
  colSpan = 1;
  max = 0;
  dataset: Record<string, string> = {};
  listeners: Record<string, Array<() => void>> = {};
  constructor(readonly tag: string) {}
  appendChild(c: El): El {
    this.children.push(c);
    return c;
  }
  replaceChildren(...c: El[]): void {
    this.children = c;
  }
  get options(): El[] {
    return this.children;
  }
  addEventListener(ev: string, fn: () => void): void {
    (this.listeners[ev] ??= []).push(fn);
  }
  /** The element's text and its children's, the non-empty ones joined by a space. */
  text(): string {
    return [this.textContent, ...this.children.map((c) => c.text())].filter(Boolean).join(' ');
  }
}

/** A running page: its elements by id, and `send`, an event from the server on its EventSource. */
export interface PageRun {
  els: Map<string, El>;
  send(event: string, data: unknown): void;
}

/**
 * Runs the dashboard page's script (operator/dashboard-page.ts) on El elements, with a fake
 * EventSource; `search` is the address's query, `now` fixes Date.now() (default: the real clock).
 */
export function runPage(o: { search?: string; now?: number } = {}): PageRun {
  const html = dashboardPage({ nonce: 'n' });
  const js = /<script nonce="n">([\s\S]*)<\/script>/.exec(html)![1];
  const ids = [...html.matchAll(/id="([a-z]+)"/g)].map((m) => m[1]);
  const els = new Map(ids.map((id) => [id, new El(id)]));
  const sources: Array<{ listeners: Record<string, (e: { data: string }) => void> }> = [];
  const now = o.now;
  const PageDate =
    now === undefined
      ? Date
      : class extends Date {
          static override now(): number {
            return now;
          }
        };
  vm.runInNewContext(js, {
    document: { getElementById: (id: string) => els.get(id) ?? null, createElement: (t: string) => new El(t) },
    EventSource: class {
      listeners: Record<string, (e: { data: string }) => void> = {};
      constructor() {
        sources.push(this);
      }
      addEventListener(ev: string, fn: (e: { data: string }) => void): void {
        this.listeners[ev] = fn;
      }
    },
    location: { search: o.search ?? '', pathname: '/' },
    history: { replaceState: () => undefined },
    URLSearchParams,
    requestAnimationFrame: (fn: () => void) => fn(),
    setInterval: () => 0,
    Date: PageDate,
    JSON,
    Math,
    Map,
    Set,
    Number,
    String,
    Object,
  });
  return { els, send: (event, data) => sources[0].listeners[event]({ data: JSON.stringify(data) }) };
}
