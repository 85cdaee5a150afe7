// Fault plans: every field's validation, defaults, the JSON round trip, and the matcher's seeded, per-rule semantics.
import { describe, expect, it } from 'vitest';
import {
  EMPTY_FAULT_PLAN,
  FAULT_KINDS,
  FaultMatcher,
  FaultPlanError,
  faultPlanJson,
  parseFaultPlan,
  type FaultPlan,
  type RequestFacts,
} from '../../src/faults/fault-plan.js';

const FACTS: RequestFacts = { dpRank: 0, promptTokens: 100, sinceStartMs: 0 };

/** One rule with the given JSON match and action. */
function ruleJson(match: unknown, action: unknown = { kind: 'cut' }): unknown {
  return { rules: [{ match, action }] };
}

function actionJson(action: unknown): unknown {
  return { rules: [{ action }] };
}

/** Which rule fired for each request (null = none), facts chosen per index. */
function verdicts(plan: FaultPlan, count: number, facts: (index: number) => RequestFacts = () => FACTS): (number | null)[] {
  const matcher = new FaultMatcher(plan);
  return Array.from({ length: count }, (_, i) => matcher.next(facts(i))?.rule ?? null);
}

function firingIndexes(plan: FaultPlan, count: number, rule = 0, facts?: (index: number) => RequestFacts): number[] {
  return verdicts(plan, count, facts).flatMap((r, i) => (r === rule ? [i] : []));
}

describe('parseFaultPlan refuses', () => {
  it.each<[string, unknown, string]>([
    ['a non-object plan', [], ''],
    ['a null plan', null, ''],
    ['a string plan', 'cut', ''],
    ['an unknown top-level key', { seed: 1, rule: [] }, 'rule'],
    ['a negative seed', { seed: -1 }, 'seed'],
    ['a fractional seed', { seed: 1.5 }, 'seed'],
    ['a seed beyond 32 bits', { seed: 2 ** 32 }, 'seed'],
    ['a seed as a string', { seed: '7' }, 'seed'],
    ['rules that are not an array', { rules: {} }, 'rules'],
    ['a rule that is not an object', { rules: [5] }, 'rules[0]'],
    ['an unknown rule key', { rules: [{ action: { kind: 'cut' }, when: {} }] }, 'rules[0].when'],
    ['a rule without an action', { rules: [{ match: {} }] }, 'rules[0].action'],
    ['a null match', ruleJson(null), 'rules[0].match'],
    ['an array match', ruleJson([]), 'rules[0].match'],
    ['an unknown match key', ruleJson({ nth: 2 }), 'rules[0].match.nth'],
    ['an unknown match key needing quotes', ruleJson({ 'every nth': 2 }), 'rules[0].match["every nth"]'],
    ['a negative probability', ruleJson({ probability: -0.1 }), 'rules[0].match.probability'],
    ['a probability above 1', ruleJson({ probability: 1.5 }), 'rules[0].match.probability'],
    ['a probability as a string', ruleJson({ probability: '0.5' }), 'rules[0].match.probability'],
    ['every_nth 0', ruleJson({ every_nth: 0 }), 'rules[0].match.every_nth'],
    ['a fractional every_nth', ruleJson({ every_nth: 1.5 }), 'rules[0].match.every_nth'],
    ['a request_index that is not an array', ruleJson({ request_index: 3 }), 'rules[0].match.request_index'],
    ['a request_index of one', ruleJson({ request_index: [1] }), 'rules[0].match.request_index'],
    ['a request_index of three', ruleJson({ request_index: [1, 2, 3] }), 'rules[0].match.request_index'],
    ['a negative first index', ruleJson({ request_index: [-1, 2] }), 'rules[0].match.request_index[0]'],
    ['a fractional last index', ruleJson({ request_index: [0, 1.5] }), 'rules[0].match.request_index[1]'],
    ['a reversed request_index', ruleJson({ request_index: [5, 3] }), 'rules[0].match.request_index'],
    ['a negative dp_rank', ruleJson({ dp_rank: -1 }), 'rules[0].match.dp_rank'],
    ['a negative min_prompt_tokens', ruleJson({ min_prompt_tokens: -1 }), 'rules[0].match.min_prompt_tokens'],
    ['a max_prompt_tokens as a string', ruleJson({ max_prompt_tokens: '10' }), 'rules[0].match.max_prompt_tokens'],
    ['min_prompt_tokens above max', ruleJson({ min_prompt_tokens: 10, max_prompt_tokens: 5 }), 'rules[0].match.max_prompt_tokens'],
    ['a negative after_ms', ruleJson({ after_ms: -1 }), 'rules[0].match.after_ms'],
    ['an infinite before_ms', ruleJson({ before_ms: Infinity }), 'rules[0].match.before_ms'],
    ['an empty time window', ruleJson({ after_ms: 100, before_ms: 100 }), 'rules[0].match.before_ms'],
    ['a reversed time window', ruleJson({ after_ms: 200, before_ms: 100 }), 'rules[0].match.before_ms'],
    ['times 0', ruleJson({ times: 0 }), 'rules[0].match.times'],
    ['fractional times', ruleJson({ times: 1.5 }), 'rules[0].match.times'],
    ['null times', ruleJson({ times: null }), 'rules[0].match.times'],
    ['an action that is not an object', { rules: [{ action: 'cut' }] }, 'rules[0].action'],
    ['an action without a kind', actionJson({}), 'rules[0].action.kind'],
    ['an unknown kind', actionJson({ kind: 'explode' }), 'rules[0].action.kind'],
    ['a kind from Object.prototype', actionJson({ kind: 'toString' }), 'rules[0].action.kind'],
    ['a numeric kind', actionJson({ kind: 5 }), 'rules[0].action.kind'],
    ['an unknown action key', actionJson({ kind: 'cut', colour: 'red' }), 'rules[0].action.colour'],
    ['another kind’s key (factor on cut)', actionJson({ kind: 'cut', factor: 2 }), 'rules[0].action.factor'],
    ['another kind’s key (after_tokens on refuse)', actionJson({ kind: 'refuse', after_tokens: 1 }), 'rules[0].action.after_tokens'],
    ['any key on no_stream', actionJson({ kind: 'no_stream', ms: 5 }), 'rules[0].action.ms'],
    ['a numeric message', actionJson({ kind: 'refuse', message: 5 }), 'rules[0].action.message'],
    ['an empty message', actionJson({ kind: 'error', message: '' }), 'rules[0].action.message'],
    ['a negative after_tokens on error', actionJson({ kind: 'error', after_tokens: -1 }), 'rules[0].action.after_tokens'],
    ['a fractional after_tokens on cut', actionJson({ kind: 'cut', after_tokens: 2.5 }), 'rules[0].action.after_tokens'],
    ['a stall without ms', actionJson({ kind: 'stall', before_token: 2 }), 'rules[0].action.ms'],
    ['a negative stall', actionJson({ kind: 'stall', ms: -1 }), 'rules[0].action.ms'],
    ['a stall before token 0', actionJson({ kind: 'stall', before_token: 0, ms: 10 }), 'rules[0].action.before_token'],
    ['a slow without factor', actionJson({ kind: 'slow' }), 'rules[0].action.factor'],
    ['a slow that speeds up', actionJson({ kind: 'slow', factor: 0.5 }), 'rules[0].action.factor'],
    ['an infinite factor', actionJson({ kind: 'slow', factor: Infinity }), 'rules[0].action.factor'],
    ['a factor as a string', actionJson({ kind: 'slow', factor: '2' }), 'rules[0].action.factor'],
    ['exit_code 256', actionJson({ kind: 'crash', exit_code: 256 }), 'rules[0].action.exit_code'],
    ['a negative exit_code', actionJson({ kind: 'crash', exit_code: -1 }), 'rules[0].action.exit_code'],
    ['a fractional exit_code', actionJson({ kind: 'crash', exit_code: 1.5 }), 'rules[0].action.exit_code'],
    ['a negative after_tokens on crash', actionJson({ kind: 'crash', after_tokens: -1 }), 'rules[0].action.after_tokens'],
    ['a zero-ms deregister', actionJson({ kind: 'deregister', ms: 0 }), 'rules[0].action.ms'],
    ['a deregister ms as a string', actionJson({ kind: 'deregister', ms: '10' }), 'rules[0].action.ms'],
    ['kv_events without a mode', actionJson({ kind: 'kv_events' }), 'rules[0].action.mode'],
    ['an unknown kv_events mode', actionJson({ kind: 'kv_events', mode: 'lose' }), 'rules[0].action.mode'],
    ['a delay without ms', actionJson({ kind: 'kv_events', mode: 'delay' }), 'rules[0].action.ms'],
    ['a delay with null ms', actionJson({ kind: 'kv_events', mode: 'delay', ms: null }), 'rules[0].action.ms'],
    ['a negative delay', actionJson({ kind: 'kv_events', mode: 'delay', ms: -1 }), 'rules[0].action.ms'],
    ['ms on a drop', actionJson({ kind: 'kv_events', mode: 'drop', ms: 10 }), 'rules[0].action.ms'],
    ['load_metrics without a mode', actionJson({ kind: 'load_metrics', ms: 10 }), 'rules[0].action.mode'],
    ['a kv_events mode on load_metrics', actionJson({ kind: 'load_metrics', mode: 'drop', ms: 10 }), 'rules[0].action.mode'],
    ['load_metrics without ms', actionJson({ kind: 'load_metrics', mode: 'stop' }), 'rules[0].action.ms'],
    ['load_metrics for 0 ms', actionJson({ kind: 'load_metrics', mode: 'freeze', ms: 0 }), 'rules[0].action.ms'],
    ['a bad second rule', { rules: [{ action: { kind: 'cut' } }, { action: { kind: 'slow', factor: 0 } }] }, 'rules[1].action.factor'],
  ])('%s → %s', (_what, plan, field) => {
    let error: unknown;
    try {
      parseFaultPlan(plan);
    } catch (e) {
      error = e;
    }
    expect(error).toBeInstanceOf(FaultPlanError);
    const { field: named, message } = error as FaultPlanError;
    expect(named).toBe(field);
    expect(message.startsWith(field === '' ? '' : `${field}: `)).toBe(true);
    expect(message).not.toContain('\n');
    expect(message.length).toBeGreaterThan(field.length + 10);
  });

  it('says what is wrong and what was given', () => {
    expect(() => parseFaultPlan(actionJson({ kind: 'cut', factor: 2 }))).toThrow('rules[0].action.factor: not a key of a cut action (it takes after_tokens)');
    expect(() => parseFaultPlan(actionJson({ kind: 'crash', exit_code: 300 }))).toThrow('rules[0].action.exit_code: must be an integer in [0, 255], got 300');
    expect(() => parseFaultPlan(ruleJson({ min_prompt_tokens: 10, max_prompt_tokens: 5 }))).toThrow(
      'rules[0].match.max_prompt_tokens: must be ≥ min_prompt_tokens (10), got 5',
    );
    expect(() => parseFaultPlan(actionJson({ kind: 'slow' }))).toThrow('rules[0].action.factor: is required for a slow action');
  });
});

describe('parseFaultPlan defaults', () => {
  it('reads an empty object, and a plan without rules, as no faults', () => {
    expect(parseFaultPlan({})).toStrictEqual({ seed: 0, rules: [] });
    expect(parseFaultPlan({ seed: 7 })).toStrictEqual({ seed: 7, rules: [] });
    expect(parseFaultPlan({ seed: 2 ** 32 - 1, rules: [] }).seed).toBe(2 ** 32 - 1);
    expect(parseFaultPlan({})).toStrictEqual(EMPTY_FAULT_PLAN);
  });

  it('reads an absent or empty match as matching every request', () => {
    const plan = parseFaultPlan({ rules: [{ action: { kind: 'cut' } }, { match: {}, action: { kind: 'cut' } }] });
    expect(plan.rules.map((r) => r.match)).toStrictEqual([{}, {}]);
  });

  it.each<[unknown, unknown]>([
    [{ kind: 'refuse' }, { kind: 'refuse', message: 'injected fault' }],
    [{ kind: 'error' }, { kind: 'error', afterTokens: 0, message: 'injected fault' }],
    [{ kind: 'cut' }, { kind: 'cut', afterTokens: 0 }],
    [{ kind: 'stall', ms: 0 }, { kind: 'stall', beforeToken: 1, ms: 0 }],
    [{ kind: 'slow', factor: 1 }, { kind: 'slow', factor: 1 }],
    [{ kind: 'no_stream' }, { kind: 'no_stream' }],
    [{ kind: 'crash' }, { kind: 'crash', afterTokens: 0, exitCode: 1 }],
    [{ kind: 'deregister' }, { kind: 'deregister', ms: null }],
    [{ kind: 'deregister', ms: null }, { kind: 'deregister', ms: null }],
    [{ kind: 'kv_events', mode: 'drop' }, { kind: 'kv_events', mode: 'drop', ms: null }],
    [{ kind: 'kv_events', mode: 'gap', ms: null }, { kind: 'kv_events', mode: 'gap', ms: null }],
    [{ kind: 'kv_events', mode: 'delay', ms: 0 }, { kind: 'kv_events', mode: 'delay', ms: 0 }],
    [{ kind: 'load_metrics', mode: 'freeze', ms: 0.5 }, { kind: 'load_metrics', mode: 'freeze', ms: 0.5 }],
  ])('%j → %j', (action, expected) => {
    expect(parseFaultPlan(actionJson(action)).rules[0].action).toStrictEqual(expected);
  });

  it('knows every kind the type names', () => {
    expect([...FAULT_KINDS].sort()).toStrictEqual(
      ['crash', 'cut', 'deregister', 'error', 'kv_events', 'load_metrics', 'no_stream', 'refuse', 'slow', 'stall'],
    );
  });

  it('reads the issue’s example', () => {
    const plan = parseFaultPlan({
      seed: 7,
      rules: [
        { match: { every_nth: 3 }, action: { kind: 'cut', after_tokens: 5 } },
        { match: { request_index: [0, 0] }, action: { kind: 'refuse', message: 'injected' } },
        { match: { probability: 0.05, times: 10 }, action: { kind: 'stall', before_token: 1, ms: 3000 } },
      ],
    });
    expect(plan).toStrictEqual({
      seed: 7,
      rules: [
        { match: { everyNth: 3 }, action: { kind: 'cut', afterTokens: 5 } },
        { match: { requestIndex: [0, 0] }, action: { kind: 'refuse', message: 'injected' } },
        { match: { probability: 0.05, times: 10 }, action: { kind: 'stall', beforeToken: 1, ms: 3000 } },
      ],
    });
  });
});

describe('faultPlanJson', () => {
  const EVERYTHING = {
    seed: 4_000_000_000,
    rules: [
      {
        match: {
          probability: 0.25,
          every_nth: 2,
          request_index: [3, 90],
          dp_rank: 1,
          min_prompt_tokens: 10,
          max_prompt_tokens: 10,
          after_ms: 0.5,
          before_ms: 2000,
          times: 4,
        },
        action: { kind: 'error', after_tokens: 3, message: 'boom' },
      },
      { action: { kind: 'refuse' } },
      { action: { kind: 'cut', after_tokens: 5 } },
      { action: { kind: 'stall', before_token: 4, ms: 3000 } },
      { action: { kind: 'slow', factor: 2.5 } },
      { action: { kind: 'no_stream' } },
      { action: { kind: 'crash', after_tokens: 9, exit_code: 0 } },
      { action: { kind: 'deregister', ms: 1500 } },
      { action: { kind: 'deregister' } },
      { action: { kind: 'kv_events', mode: 'delay', ms: 250 } },
      { action: { kind: 'kv_events', mode: 'duplicate' } },
      { action: { kind: 'load_metrics', mode: 'stop', ms: 100 } },
    ],
  };

  it('round-trips every key and kind, through JSON text too', () => {
    const plan = parseFaultPlan(EVERYTHING);
    expect(parseFaultPlan(faultPlanJson(plan))).toStrictEqual(plan);
    expect(parseFaultPlan(JSON.parse(JSON.stringify(faultPlanJson(plan))))).toStrictEqual(plan);
    expect(parseFaultPlan(faultPlanJson(EMPTY_FAULT_PLAN))).toStrictEqual(EMPTY_FAULT_PLAN);
  });

  it('writes snake_case keys and spells the defaults out', () => {
    const plan = parseFaultPlan({
      rules: [
        { match: { every_nth: 3, request_index: [0, 4] }, action: { kind: 'crash' } },
        { action: { kind: 'kv_events', mode: 'drop' } },
      ],
    });
    expect(faultPlanJson(plan)).toStrictEqual({
      seed: 0,
      rules: [
        { match: { every_nth: 3, request_index: [0, 4] }, action: { kind: 'crash', after_tokens: 0, exit_code: 1 } },
        { match: {}, action: { kind: 'kv_events', mode: 'drop', ms: null } },
      ],
    });
  });

  it('does not share the plan’s arrays', () => {
    const plan = parseFaultPlan(ruleJson({ request_index: [1, 2] }));
    const json = faultPlanJson(plan) as { rules: { match: { request_index: number[] } }[] };
    json.rules[0].match.request_index[0] = 9;
    expect(plan.rules[0].match.requestIndex).toStrictEqual([1, 2]);
  });
});

describe('FaultMatcher conditions', () => {
  const plan = (match: unknown, seed = 0): FaultPlan => ({ ...parseFaultPlan(ruleJson(match)), seed });

  it('with no rules, never fires', () => {
    expect(verdicts(EMPTY_FAULT_PLAN, 5)).toStrictEqual([null, null, null, null, null]);
  });

  it('with an empty match, fires on every request', () => {
    expect(verdicts(plan({}), 4)).toStrictEqual([0, 0, 0, 0]);
  });

  it('every_nth fires on arrivals n, 2n, … (indexes n-1, 2n-1, …)', () => {
    expect(firingIndexes(plan({ every_nth: 3 }), 10)).toStrictEqual([2, 5, 8]);
    expect(firingIndexes(plan({ every_nth: 1 }), 3)).toStrictEqual([0, 1, 2]);
  });

  it('request_index is an inclusive range of 0-based arrival indexes', () => {
    expect(firingIndexes(plan({ request_index: [0, 0] }), 5)).toStrictEqual([0]);
    expect(firingIndexes(plan({ request_index: [2, 4] }), 8)).toStrictEqual([2, 3, 4]);
  });

  it('dp_rank matches only that rank', () => {
    const rankOf = (i: number): RequestFacts => ({ ...FACTS, dpRank: i % 3 });
    expect(firingIndexes(plan({ dp_rank: 1 }), 9, 0, rankOf)).toStrictEqual([1, 4, 7]);
  });

  it('prompt bounds are inclusive', () => {
    const prompt = (i: number): RequestFacts => ({ ...FACTS, promptTokens: i * 10 });
    expect(firingIndexes(plan({ min_prompt_tokens: 30 }), 6, 0, prompt)).toStrictEqual([3, 4, 5]);
    expect(firingIndexes(plan({ max_prompt_tokens: 20 }), 6, 0, prompt)).toStrictEqual([0, 1, 2]);
    expect(firingIndexes(plan({ min_prompt_tokens: 20, max_prompt_tokens: 40 }), 6, 0, prompt)).toStrictEqual([2, 3, 4]);
    expect(firingIndexes(plan({ min_prompt_tokens: 20, max_prompt_tokens: 20 }), 6, 0, prompt)).toStrictEqual([2]);
  });

  it('the time window is [after_ms, before_ms)', () => {
    const at = (i: number): RequestFacts => ({ ...FACTS, sinceStartMs: i * 100 });
    expect(firingIndexes(plan({ after_ms: 200 }), 5, 0, at)).toStrictEqual([2, 3, 4]);
    expect(firingIndexes(plan({ before_ms: 200 }), 5, 0, at)).toStrictEqual([0, 1]);
    expect(firingIndexes(plan({ after_ms: 100, before_ms: 300 }), 5, 0, at)).toStrictEqual([1, 2]);
  });

  it('conditions combine with AND', () => {
    const facts = (i: number): RequestFacts => ({ dpRank: i % 2, promptTokens: 50, sinceStartMs: i });
    expect(firingIndexes(plan({ every_nth: 2, dp_rank: 1, request_index: [4, 20] }), 12, 0, facts)).toStrictEqual([5, 7, 9, 11]);
    expect(firingIndexes(plan({ every_nth: 2, dp_rank: 0 }), 12, 0, facts)).toStrictEqual([]);
  });

  it('times caps the firings and counts only firings', () => {
    expect(firingIndexes(plan({ times: 2 }), 5)).toStrictEqual([0, 1]);
    // Requests that fail the other conditions do not use up the budget.
    expect(firingIndexes(plan({ every_nth: 3, times: 2 }), 20)).toStrictEqual([2, 5]);
  });

  it('counts firings per rule in fired', () => {
    const matcher = new FaultMatcher(parseFaultPlan({ rules: [{ match: { every_nth: 2 }, action: { kind: 'cut' } }, { action: { kind: 'slow', factor: 2 } }] }));
    for (let i = 0; i < 7; i++) matcher.next(FACTS);
    expect(matcher.fired).toStrictEqual([3, 4]);
  });
});

describe('FaultMatcher rule order', () => {
  it('first matching rule wins, and hands back its action', () => {
    const plan = parseFaultPlan({
      rules: [
        { match: { request_index: [0, 0] }, action: { kind: 'refuse', message: 'first' } },
        { match: { every_nth: 2 }, action: { kind: 'cut', after_tokens: 5 } },
        { action: { kind: 'slow', factor: 2 } },
      ],
    });
    expect(verdicts(plan, 5)).toStrictEqual([0, 1, 2, 1, 2]);
    expect(new FaultMatcher(plan).next(FACTS)).toStrictEqual({ rule: 0, action: { kind: 'refuse', message: 'first' } });
  });

  it('a rule whose times are used up lets the next rule fire', () => {
    const plan = parseFaultPlan({ rules: [{ match: { times: 2 }, action: { kind: 'cut' } }, { action: { kind: 'no_stream' } }] });
    expect(verdicts(plan, 4)).toStrictEqual([0, 0, 1, 1]);
  });
});

describe('FaultMatcher probability', () => {
  const probabilityPlan = (probability: number, seed: number, extra: object = {}): FaultPlan =>
    parseFaultPlan({ seed, rules: [{ match: { probability, ...extra }, action: { kind: 'cut' } }] });

  it.each([0, 1, 7, 123456789])('fires at the long-run rate (seed %i)', (seed) => {
    const fired = firingIndexes(probabilityPlan(0.05, seed), 10_000).length;
    expect(fired / 10_000).toBeGreaterThanOrEqual(0.04);
    expect(fired / 10_000).toBeLessThanOrEqual(0.06);
  });

  it('0 never fires and 1 always does', () => {
    expect(firingIndexes(probabilityPlan(0, 3), 1000)).toStrictEqual([]);
    expect(firingIndexes(probabilityPlan(1, 3), 1000)).toHaveLength(1000);
  });

  it('gives the same verdicts for the same plan, seed and request order', () => {
    const plan = parseFaultPlan({
      seed: 7,
      rules: [
        { match: { probability: 0.1, times: 20 }, action: { kind: 'stall', ms: 10 } },
        { match: { probability: 0.3, dp_rank: 1 }, action: { kind: 'cut' } },
        { match: { probability: 0.2 }, action: { kind: 'slow', factor: 2 } },
      ],
    });
    const facts = (i: number): RequestFacts => ({ dpRank: i % 2, promptTokens: i, sinceStartMs: i * 3 });
    const first = verdicts(plan, 2000, facts);
    expect(verdicts(plan, 2000, facts)).toStrictEqual(first);
    // Also from a plan read back from its JSON, as a restarted worker would.
    expect(verdicts(parseFaultPlan(faultPlanJson(plan)), 2000, facts)).toStrictEqual(first);
    expect(verdicts({ ...plan, seed: 8 }, 2000, facts)).not.toStrictEqual(first);
  });

  it('an unrelated rule added before does not move the requests a probability rule picks', () => {
    const alone = parseFaultPlan({ seed: 11, rules: [{ match: { probability: 0.2 }, action: { kind: 'cut' } }] });
    const behind = parseFaultPlan({
      seed: 11,
      rules: [
        { match: { request_index: [0, 99] }, action: { kind: 'refuse' } },
        { match: { probability: 0.5 }, action: { kind: 'no_stream' } },
        { match: { probability: 0.2 }, action: { kind: 'cut' } },
      ],
    });
    const aloneVerdicts = verdicts(alone, 3000);
    const behindVerdicts = verdicts(behind, 3000);
    let compared = 0;
    for (let i = 0; i < 3000; i++) {
      // Where an earlier rule fired, the probability rule was never asked; everywhere else it must agree.
      if (behindVerdicts[i] === 0 || behindVerdicts[i] === 1) continue;
      expect(behindVerdicts[i] === 2).toBe(aloneVerdicts[i] === 0);
      compared++;
    }
    expect(compared).toBeGreaterThan(1000);
  });

  it('draws once per request whether or not its other conditions hold or its times are used up', () => {
    // The same rule on all-rank-1 traffic shows every draw that comes out under its probability.
    const ranked = probabilityPlan(0.3, 5, { dp_rank: 1 });
    const underProbability = firingIndexes(ranked, 3000, 0, () => ({ ...FACTS, dpRank: 1 }));
    const alternating = firingIndexes(ranked, 3000, 0, (i) => ({ ...FACTS, dpRank: i % 2 }));
    expect(alternating).toStrictEqual(underProbability.filter((i) => i % 2 === 1));
    expect(alternating.length).toBeGreaterThan(300);

    // A used-up rule keeps drawing: the rule behind it sees the same picks as it would alone.
    const fallback = { match: { probability: 0.3 }, action: { kind: 'no_stream' } };
    const alone = firingIndexes(parseFaultPlan({ seed: 5, rules: [fallback] }), 3000);
    const capped = parseFaultPlan({ seed: 5, rules: [{ match: { probability: 0.3, times: 3 }, action: { kind: 'cut' } }, fallback] });
    const cappedVerdicts = verdicts(capped, 3000);
    expect(cappedVerdicts.filter((r) => r === 0)).toHaveLength(3);
    const lastCapped = cappedVerdicts.lastIndexOf(0);
    expect(cappedVerdicts.flatMap((r, i) => (r === 1 && i > lastCapped ? [i] : []))).toStrictEqual(alone.filter((i) => i > lastCapped));
  });

  it('gives identical rules their own streams', () => {
    const rule = { match: { probability: 0.5 }, action: { kind: 'cut' } };
    const plan = parseFaultPlan({ seed: 3, rules: [rule, rule] });
    const matcher = new FaultMatcher(plan);
    const picks = Array.from({ length: 200 }, () => matcher.next(FACTS)?.rule ?? null);
    // With one shared stream the second rule could never fire: it would miss exactly when the first did.
    expect(picks).toContain(1);
    expect(picks).toContain(null);
  });
});
