// Fault plans: validate the JSON, print it back, and decide per request which rule fires (seeded, pure).
import { createRng, mixSeed, type Rng } from '../core/random.js';

export type FaultAction =
  | { kind: 'refuse'; message: string }
  | { kind: 'error'; afterTokens: number; message: string }
  | { kind: 'cut'; afterTokens: number }
  | { kind: 'stall'; beforeToken: number; ms: number }
  | { kind: 'slow'; factor: number }
  | { kind: 'no_stream' }
  | { kind: 'crash'; afterTokens: number; exitCode: number }
  /** `ms: null` = withdrawn until the plan changes. */
  | { kind: 'deregister'; ms: number | null }
  /** `ms` is set for `delay` and null for every other mode. */
  | { kind: 'kv_events'; mode: 'drop' | 'delay' | 'duplicate' | 'gap'; ms: number | null }
  | { kind: 'load_metrics'; mode: 'stop' | 'freeze'; ms: number };

export type FaultKind = FaultAction['kind'];

/** Each kind's action keys besides `kind`, as spelled in JSON; the mapped type keeps the list complete. */
const ACTION_KEYS: { readonly [K in FaultKind]: readonly string[] } = {
  refuse: ['message'],
  error: ['after_tokens', 'message'],
  cut: ['after_tokens'],
  stall: ['before_token', 'ms'],
  slow: ['factor'],
  no_stream: [],
  crash: ['after_tokens', 'exit_code'],
  deregister: ['ms'],
  kv_events: ['mode', 'ms'],
  load_metrics: ['mode', 'ms'],
};

export const FAULT_KINDS: readonly FaultKind[] = Object.keys(ACTION_KEYS) as FaultKind[];

const KV_EVENT_MODES = ['drop', 'delay', 'duplicate', 'gap'] as const;
const LOAD_METRIC_MODES = ['stop', 'freeze'] as const;
const DEFAULT_MESSAGE = 'injected fault';

/** Conditions on a request; all that are set must hold (AND). */
export interface FaultMatch {
  /** Fires with this chance in [0, 1], from the rule's own seeded stream. */
  probability?: number;
  /** Fires on arrivals n, 2n, … (1-based), i.e. request indexes n-1, 2n-1, … */
  everyNth?: number;
  /** Inclusive range of request indexes (0-based, arrival order, per worker). */
  requestIndex?: [number, number];
  dpRank?: number;
  /** Inclusive bounds on the prompt's token count. */
  minPromptTokens?: number;
  maxPromptTokens?: number;
  /** Half-open window [afterMs, beforeMs) of ms since the worker started serving. */
  afterMs?: number;
  beforeMs?: number;
  /** How often the rule may fire in total. */
  times?: number;
}

export interface FaultRule {
  match: FaultMatch;
  action: FaultAction;
}

export interface FaultPlan {
  seed: number;
  rules: FaultRule[];
}

// Frozen because it is shared: a caller pushing a rule into it would change every worker's plan.
export const EMPTY_FAULT_PLAN: FaultPlan = Object.freeze({ seed: 0, rules: Object.freeze([]) as unknown as FaultRule[] });

const PLAN_KEYS = ['seed', 'rules'];
const RULE_KEYS = ['match', 'action'];
const MATCH_KEYS = ['probability', 'every_nth', 'request_index', 'dp_rank', 'min_prompt_tokens', 'max_prompt_tokens', 'after_ms', 'before_ms', 'times'];

/** A plan that cannot be used; `field` is the JSON path of the offending field, e.g. "rules[0].action.after_tokens". */
export class FaultPlanError extends Error {
  constructor(
    readonly field: string,
    message: string,
  ) {
    // The root has no name of its own; a caller adds its own prefix (the flag, or "faults" in a PATCH).
    super(field === '' ? message : `${field}: ${message}`);
    this.name = 'FaultPlanError';
  }
}

type JsonObject = Record<string, unknown>;

function child(path: string, key: string | number): string {
  if (typeof key === 'number') return `${path}[${key}]`;
  if (/^[A-Za-z_][A-Za-z0-9_]*$/.test(key)) return path === '' ? key : `${path}.${key}`;
  return `${path}[${JSON.stringify(key)}]`;
}

function shown(value: unknown): string {
  if (value === undefined) return 'nothing';
  const text = typeof value === 'number' ? String(value) : (JSON.stringify(value) ?? String(value));
  return text.length > 40 ? `${text.slice(0, 39)}…` : text;
}

function camelCase(key: string): string {
  return key.replace(/_([a-z])/g, (_, c: string) => c.toUpperCase());
}

function objectAt(value: unknown, path: string, what: string): JsonObject {
  if (typeof value !== 'object' || value === null || Array.isArray(value)) {
    throw new FaultPlanError(path, `must be ${what} (a JSON object), got ${shown(value)}`);
  }
  return value as JsonObject;
}

function checkKeys(obj: JsonObject, path: string, allowed: readonly string[], refusal: string): void {
  for (const key of Object.keys(obj)) {
    if (!allowed.includes(key)) throw new FaultPlanError(child(path, key), refusal);
  }
}

interface Bounds {
  min?: number;
  above?: number;
  max?: number;
}

function boundsText({ min, above, max }: Bounds): string {
  if (min !== undefined && max !== undefined) return `in [${min}, ${max}]`;
  if (above !== undefined) return `> ${above}`;
  return `≥ ${min}`;
}

function withinBounds(n: number, { min, above, max }: Bounds): boolean {
  return (min === undefined || n >= min) && (above === undefined || n > above) && (max === undefined || n <= max);
}

function numberAt(value: unknown, path: string, bounds: Bounds): number {
  if (typeof value !== 'number' || !Number.isFinite(value) || !withinBounds(value, bounds)) {
    throw new FaultPlanError(path, `must be a number ${boundsText(bounds)}, got ${shown(value)}`);
  }
  return value;
}

function integerAt(value: unknown, path: string, bounds: Bounds): number {
  if (typeof value !== 'number' || !Number.isSafeInteger(value) || !withinBounds(value, bounds)) {
    throw new FaultPlanError(path, `must be an integer ${boundsText(bounds)}, got ${shown(value)}`);
  }
  return value;
}

function oneOf<T extends string>(value: unknown, path: string, choices: readonly T[]): T {
  if (typeof value !== 'string' || !(choices as readonly string[]).includes(value)) {
    throw new FaultPlanError(path, `must be one of ${choices.join(', ')}, got ${shown(value)}`);
  }
  return value as T;
}

/** Validates a parsed JSON value (what JSON.parse returned) into a plan. */
export function parseFaultPlan(value: unknown): FaultPlan {
  const raw = objectAt(value, '', 'a fault plan');
  checkKeys(raw, '', PLAN_KEYS, `unknown key (a fault plan takes ${PLAN_KEYS.join(', ')})`);
  const seed = raw.seed === undefined ? 0 : integerAt(raw.seed, 'seed', { min: 0, max: 0xffffffff });
  if (raw.rules !== undefined && !Array.isArray(raw.rules)) {
    throw new FaultPlanError('rules', `must be an array of rules, got ${shown(raw.rules)}`);
  }
  const rules = ((raw.rules ?? []) as unknown[]).map((rule, i) => parseRule(rule, child('rules', i)));
  return { seed, rules };
}

function parseRule(value: unknown, path: string): FaultRule {
  const raw = objectAt(value, path, 'a rule');
  checkKeys(raw, path, RULE_KEYS, `unknown key (a rule takes ${RULE_KEYS.join(', ')})`);
  const match = raw.match === undefined ? {} : parseMatch(raw.match, child(path, 'match'));
  if (raw.action === undefined) throw new FaultPlanError(child(path, 'action'), 'is required');
  return { match, action: parseAction(raw.action, child(path, 'action')) };
}

function parseMatch(value: unknown, path: string): FaultMatch {
  const raw = objectAt(value, path, 'a match');
  checkKeys(raw, path, MATCH_KEYS, `unknown key (a match takes ${MATCH_KEYS.join(', ')})`);
  const at = (key: string): string => child(path, key);
  const match: FaultMatch = {};
  if (raw.probability !== undefined) match.probability = numberAt(raw.probability, at('probability'), { min: 0, max: 1 });
  if (raw.every_nth !== undefined) match.everyNth = integerAt(raw.every_nth, at('every_nth'), { min: 1 });
  if (raw.request_index !== undefined) match.requestIndex = parseIndexRange(raw.request_index, at('request_index'));
  if (raw.dp_rank !== undefined) match.dpRank = integerAt(raw.dp_rank, at('dp_rank'), { min: 0 });
  if (raw.min_prompt_tokens !== undefined) match.minPromptTokens = integerAt(raw.min_prompt_tokens, at('min_prompt_tokens'), { min: 0 });
  if (raw.max_prompt_tokens !== undefined) match.maxPromptTokens = integerAt(raw.max_prompt_tokens, at('max_prompt_tokens'), { min: 0 });
  if (match.minPromptTokens !== undefined && match.maxPromptTokens !== undefined && match.minPromptTokens > match.maxPromptTokens) {
    throw new FaultPlanError(at('max_prompt_tokens'), `must be ≥ min_prompt_tokens (${match.minPromptTokens}), got ${match.maxPromptTokens}`);
  }
  if (raw.after_ms !== undefined) match.afterMs = numberAt(raw.after_ms, at('after_ms'), { min: 0 });
  if (raw.before_ms !== undefined) match.beforeMs = numberAt(raw.before_ms, at('before_ms'), { min: 0 });
  if (match.afterMs !== undefined && match.beforeMs !== undefined && match.afterMs >= match.beforeMs) {
    throw new FaultPlanError(at('before_ms'), `must be > after_ms (${match.afterMs}), got ${match.beforeMs}`);
  }
  if (raw.times !== undefined) match.times = integerAt(raw.times, at('times'), { min: 1 });
  return match;
}

function parseIndexRange(value: unknown, path: string): [number, number] {
  if (!Array.isArray(value) || value.length !== 2) {
    throw new FaultPlanError(path, `must be [first, last], two request indexes, got ${shown(value)}`);
  }
  const first = integerAt(value[0], child(path, 0), { min: 0 });
  const last = integerAt(value[1], child(path, 1), { min: 0 });
  if (first > last) throw new FaultPlanError(path, `the first index (${first}) is after the last (${last})`);
  return [first, last];
}

function parseAction(value: unknown, path: string): FaultAction {
  const raw = objectAt(value, path, 'an action');
  const at = (key: string): string => child(path, key);
  if (raw.kind === undefined) throw new FaultPlanError(at('kind'), `is required (one of ${FAULT_KINDS.join(', ')})`);
  const kind = oneOf(raw.kind, at('kind'), FAULT_KINDS);
  const keys = ACTION_KEYS[kind];
  checkKeys(raw, path, ['kind', ...keys], `not a key of a ${kind} action (it takes ${keys.length === 0 ? 'no other keys' : keys.join(', ')})`);
  const required = (key: string): unknown => {
    if (raw[key] === undefined || raw[key] === null) throw new FaultPlanError(at(key), `is required for a ${kind} action`);
    return raw[key];
  };
  const afterTokens = (): number => (raw.after_tokens === undefined ? 0 : integerAt(raw.after_tokens, at('after_tokens'), { min: 0 }));
  const message = (): string => {
    if (raw.message === undefined) return DEFAULT_MESSAGE;
    if (typeof raw.message !== 'string' || raw.message === '') {
      throw new FaultPlanError(at('message'), `must be a non-empty string, got ${shown(raw.message)}`);
    }
    return raw.message;
  };
  switch (kind) {
    case 'refuse':
      return { kind, message: message() };
    case 'error':
      return { kind, afterTokens: afterTokens(), message: message() };
    case 'cut':
      return { kind, afterTokens: afterTokens() };
    case 'stall': {
      const beforeToken = raw.before_token === undefined ? 1 : integerAt(raw.before_token, at('before_token'), { min: 1 });
      return { kind, beforeToken, ms: numberAt(required('ms'), at('ms'), { min: 0 }) };
    }
    case 'slow':
      return { kind, factor: numberAt(required('factor'), at('factor'), { min: 1 }) };
    case 'no_stream':
      return { kind };
    case 'crash': {
      const exitCode = raw.exit_code === undefined ? 1 : integerAt(raw.exit_code, at('exit_code'), { min: 0, max: 255 });
      return { kind, afterTokens: afterTokens(), exitCode };
    }
    case 'deregister':
      // Zero would withdraw and restore in the same instant; "forever" is spelled by leaving ms out.
      return { kind, ms: raw.ms === undefined || raw.ms === null ? null : numberAt(raw.ms, at('ms'), { above: 0 }) };
    case 'kv_events': {
      const mode = oneOf(required('mode'), at('mode'), KV_EVENT_MODES);
      if (mode === 'delay') return { kind, mode, ms: numberAt(required('ms'), at('ms'), { min: 0 }) };
      // null is accepted because faultPlanJson spells the absent ms out as null.
      if (raw.ms !== undefined && raw.ms !== null) throw new FaultPlanError(at('ms'), `only the delay mode takes ms, not ${mode}`);
      return { kind, mode, ms: null };
    }
    case 'load_metrics': {
      const mode = oneOf(required('mode'), at('mode'), LOAD_METRIC_MODES);
      return { kind, mode, ms: numberAt(required('ms'), at('ms'), { above: 0 }) };
    }
  }
}

/** The plan as JSON (snake_case keys, defaults spelled out), for GET /mocker/config and logs. */
export function faultPlanJson(plan: FaultPlan): Record<string, unknown> {
  return { seed: plan.seed, rules: plan.rules.map(ruleJson) };
}

// Keys come from the fixed tables, not the objects, so the text is canonical (the seeding relies on it).
function ruleJson(rule: FaultRule): JsonObject {
  const match: JsonObject = {};
  for (const key of MATCH_KEYS) {
    const value = (rule.match as JsonObject)[camelCase(key)];
    if (value !== undefined) match[key] = Array.isArray(value) ? [...value] : value;
  }
  const action: JsonObject = { kind: rule.action.kind };
  for (const key of ACTION_KEYS[rule.action.kind]) action[key] = (rule.action as JsonObject)[camelCase(key)];
  return { match, action };
}

/** What a rule can match a request on. `sinceStartMs`: ms since the worker started serving. */
export interface RequestFacts {
  dpRank: number;
  promptTokens: number;
  sinceStartMs: number;
}

export interface FaultHit {
  rule: number;
  action: FaultAction;
}

function textHash(text: string): number {
  // FNV-1a: only needs to spread rule texts over seeds, not resist anyone.
  let h = 0x811c9dc5;
  for (let i = 0; i < text.length; i++) h = Math.imul(h ^ text.charCodeAt(i), 0x01000193);
  return h >>> 0;
}

/**
 * One stream per probability rule, seeded by the plan's seed, the rule's own JSON and how many identical
 * rules precede it — not by its position, so adding or removing other rules (say, at the top of a plan
 * patched at run time) leaves the requests this rule picks unchanged, while identical rules still differ.
 */
function probabilityStreams(plan: FaultPlan): (Rng | null)[] {
  const seen = new Map<string, number>();
  return plan.rules.map((rule) => {
    if (rule.match.probability === undefined) return null;
    const text = JSON.stringify(ruleJson(rule));
    const occurrence = seen.get(text) ?? 0;
    seen.set(text, occurrence + 1);
    return createRng(mixSeed(plan.seed, textHash(text), occurrence));
  });
}

function holds(match: FaultMatch, index: number, facts: RequestFacts): boolean {
  if (match.everyNth !== undefined && (index + 1) % match.everyNth !== 0) return false;
  if (match.requestIndex !== undefined && (index < match.requestIndex[0] || index > match.requestIndex[1])) return false;
  if (match.dpRank !== undefined && facts.dpRank !== match.dpRank) return false;
  if (match.minPromptTokens !== undefined && facts.promptTokens < match.minPromptTokens) return false;
  if (match.maxPromptTokens !== undefined && facts.promptTokens > match.maxPromptTokens) return false;
  if (match.afterMs !== undefined && facts.sinceStartMs < match.afterMs) return false;
  if (match.beforeMs !== undefined && facts.sinceStartMs >= match.beforeMs) return false;
  return true;
}

/** Decides, per worker, which rule (if any) fires for each request, in arrival order. */
export class FaultMatcher {
  /** How often each rule has fired. */
  readonly fired: number[];
  private readonly rules: readonly FaultRule[];
  private readonly streams: (Rng | null)[];
  private readonly draws: Float64Array;
  private arrivals = 0;

  constructor(plan: FaultPlan) {
    this.rules = plan.rules.slice();
    this.fired = this.rules.map(() => 0);
    this.streams = probabilityStreams(plan);
    this.draws = new Float64Array(this.rules.length);
  }

  /** The next request's verdict (its index is the number of earlier calls, from 0). */
  next(facts: RequestFacts): FaultHit | null {
    const index = this.arrivals++;
    // Every probability rule draws before any verdict, exactly once per request, so its stream never
    // depends on the other rules, its other conditions or what fired earlier.
    for (let i = 0; i < this.streams.length; i++) this.draws[i] = this.streams[i]?.nextFloat() ?? 0;
    for (let i = 0; i < this.rules.length; i++) {
      const { match, action } = this.rules[i];
      if (match.times !== undefined && this.fired[i] >= match.times) continue;
      if (!holds(match, index, facts)) continue;
      if (match.probability !== undefined && !(this.draws[i] < match.probability)) continue;
      this.fired[i]++;
      return { rule: i, action };
    }
    return null;
  }
}
