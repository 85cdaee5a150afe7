// Command line: the worker (default command), `replay` and `request`; flags map 1:1 to typed configs.
import { Command, CommanderError, Option } from 'commander';
import {
  ConfigError,
  DISAGG_DEFAULTS,
  DYNAMO_VERSIONS,
  KV_CACHE_DTYPES,
  ENGINE_DEFAULTS,
  REPLAY_DEFAULTS,
  WORKER_DEFAULTS,
  parseReplayConfig,
  parseWorkerConfig,
  type RawOptions,
} from './config.js';
import { ConnectionError } from './adapters/connection-error.js';
import { addRequestCommand } from './client/request-command.js';
import { processIo, type CliIo } from './io.js';
import { rememberSecrets, redactCredentials } from './redact.js';
import { TraceError } from './replay/trace.js';


const d = (value: unknown): string => ` (default: ${value})`;

/** Engine flags shared by the worker and replay, with Dynamo's spellings and defaults. */
function addEngineOptions(cmd: Command): Command {
  return cmd
    .option('--num-gpu-blocks-override <n>', `KV cache blocks per DP rank${d(ENGINE_DEFAULTS.numGpuBlocks)}`)
    .option('--block-size <n>', `tokens per KV block${d(ENGINE_DEFAULTS.blockSize)}`)
    .option('--max-num-seqs <n>', `maximum concurrent sequences per DP rank${d(ENGINE_DEFAULTS.maxNumSeqs)}`)
    .option('--max-num-batched-tokens <n>', `token budget per forward pass${d(ENGINE_DEFAULTS.maxNumBatchedTokens)}`)
    .option('--enable-prefix-caching', `reuse cached KV blocks across requests${d('on')}`)
    .option('--no-enable-prefix-caching', 'disable prefix caching (and KV events)')
    .option('--enable-chunked-prefill', `split long prompts across passes${d('on')}`)
    .option('--no-enable-chunked-prefill', 'disable chunked prefill')
    .option('--watermark <fraction>', `fraction of KV blocks admission keeps free${d(ENGINE_DEFAULTS.watermark)}`)
    .addOption(new Option('--preemption-mode <mode>', `victim under KV pressure: newest (lifo) or oldest (fifo)${d(ENGINE_DEFAULTS.preemptionMode)}`).choices(['lifo', 'fifo']))
    .option('--speedup-ratio <x>', `divide simulated durations by x; 0 or inf = no delays${d(ENGINE_DEFAULTS.speedupRatio)}`)
    .option('--decode-speedup-ratio <x>', `extra divisor for decode time${d(ENGINE_DEFAULTS.decodeSpeedupRatio)}`)
    .option('--latency-jitter <cv>', `multiply each pass time by a seeded random factor (mean 1, this coefficient of variation, clamped to [0.3, 1.7]); 0-1, 0 = deterministic${d(ENGINE_DEFAULTS.latencyJitter)}`)
    .option('--data-parallel-size <n>', `independent scheduler+KV instances${d(ENGINE_DEFAULTS.dataParallelSize)}`)
    .option('--planner-profile-data <file.npz>', 'NPZ perf grid for interpolated timing (default: polynomial model)')
    .option('--extra-engine-args <file.json>', "JSON file with Dynamo's MockEngineArgs keys; overrides the flags")
    .option('--max-model-len <n>', 'cap on prompt + output tokens (default: the model\'s context length)')
    .option('--seed <n>', `seed for every random choice${d(ENGINE_DEFAULTS.seed)}`);
}

/** How a prompt's KV cache moves from a prefill to a decode worker (worker and replay). */
function addKvTransferOptions(cmd: Command): Command {
  const t = DISAGG_DEFAULTS.kvTransfer;
  return cmd
    .option('--kv-transfer-bandwidth <GB/s>', `prefill → decode KV transfer bandwidth; 0 disables the transfer delay${d(t.bandwidthGBps)}`)
    .option('--kv-bytes-per-token <n>', 'KV cache bytes per token (default: from the model config: layers × 2 × KV heads × head dim × dtype bytes)')
    .addOption(new Option('--kv-cache-dtype <dtype>', `KV cache dtype for --kv-bytes-per-token${d(DISAGG_DEFAULTS.kvCacheDtype)}`).choices([...KV_CACHE_DTYPES]))
    .addOption(
      new Option('--kv-transfer-timing-mode <mode>', `tokens the transfer delay counts: the whole prompt, or those the decode worker lacks${d(t.timingMode)}`).choices([
        'full_prompt',
        'destination_missing',
      ]),
    );
}

export function buildProgram(io: CliIo, argv: readonly string[], exitCode: { value: number }): Command {
  const program = new Command('dynamo-mocker')
    .description("GPU-free stand-in for NVIDIA Dynamo's mocker worker (python -m dynamo.mocker)")
    .version('0.1.0')
    .enablePositionalOptions()
    .exitOverride()
    .configureOutput({ writeOut: io.out, writeErr: io.err })
    .showHelpAfterError('(run with --help for usage)');

  program
    .option('--model-path <path>', 'local model directory or HuggingFace repo id (required for the worker)')
    .option('--model-name <name>', 'served model name (default: the --model-path string)')
    .option('--endpoint <dyn://ns.component.endpoint>', 'Dynamo endpoint to serve (default: dyn://${DYN_NAMESPACE:-dynamo}.backend.generate)')
    .option('--num-workers <n>', `independent workers in this process${d(WORKER_DEFAULTS.numWorkers)}`)
    .option('--stagger-delay <seconds>', `seconds between two worker launches, 2 s more after every 32; -1 = auto (0 up to 32 workers, 0.1 up to 128, else 0.2)${d(WORKER_DEFAULTS.staggerDelayS)}`)
    .option('--startup-time <seconds>', 'simulated load time before serving (default: 0)')
    .addOption(
      new Option(
        '--dynamo-version <version>',
        `wire protocol generation: 0.6.1 (etcd + NATS, card files as local paths), 0.6.0 (card files in the NATS object store) or 1.4 (tagged records, TCP request plane, file discovery)${d(WORKER_DEFAULTS.dynamoVersion)}`,
      ).choices([...DYNAMO_VERSIONS]),
    )
    .addOption(new Option('--discovery-backend <backend>', `1.4: where the worker registers, etcd or file (default: $DYN_DISCOVERY_BACKEND, else ${WORKER_DEFAULTS.discoveryBackend})`))
    .addOption(new Option('--request-plane <plane>', 'how requests arrive, tcp or nats (default: $DYN_REQUEST_PLANE, else tcp for 1.4, nats for 0.6.x)'))
    .addOption(new Option('--event-plane <plane>', '1.4: the event plane for KV events, load and forward-pass metrics, zmq or nats (default: $DYN_EVENT_PLANE, else zmq)'))
    .option('--no-kv-events', 'publish no KV events although prefix caching is on (the card says so); load and forward-pass metrics still go out')
    .option('--zmq-kv-events-ports <ports>', "vLLM's own KV-event stream: one base port per worker, DP rank r on base + r (default: off)")
    .option('--zmq-replay-ports <ports>', 'with --zmq-kv-events-ports: replay ROUTER base ports, one per worker (default: off)')
    .addOption(
      new Option('--disaggregation-mode <mode>', 'disaggregated serving role: agg, prefill (default endpoint dyn://${DYN_NAMESPACE:-dynamo}.prefill.generate) or decode (default: agg)').choices([
        'agg',
        'prefill',
        'decode',
      ]),
    )
    .option('--is-prefill-worker', 'deprecated: --disaggregation-mode prefill')
    .option('--is-decode-worker', 'deprecated: --disaggregation-mode decode')
    .option('--bootstrap-ports <ports>', "prefill workers: the bootstrap (handoff) server's port, one per worker (default: none, no bootstrap sessions)")
    .option('--faults <file.json>', 'fault plan: scripted, seeded faults per request (refuse, error, cut, stall, slow, no_stream, crash, deregister, kv_events, load_metrics) (default: none)')
    .option('--enable-control-api', 'serve the runtime control API under /mocker/ on the system status server (DYN_MOCKER_CONTROL_TOKEN: bearer token) (default: off)')
    .option('--migration-limit <n>', `migration_limit in the card: how often a frontend may move a broken stream to another worker${d(WORKER_DEFAULTS.migrationLimit)}`)
    .option(
      '--on-lease-loss <action>',
      `when the etcd lease is lost: exit (code 1, as Dynamo) or reregister (a new lease and records once etcd answers; in-flight requests go on)${d(WORKER_DEFAULTS.onLeaseLoss)}`,
    );
  addEngineOptions(program);
  addKvTransferOptions(program);
  program.action(async (opts: RawOptions) => {
    const config = parseWorkerConfig(opts, argv, io.env);
    const { runWorkerCommand } = await import('./worker-command.js');
    exitCode.value = await runWorkerCommand(config);
  });

  const replay = new Command('replay')
    .description('replay a request trace (or a synthetic workload) through a fleet of simulated workers on a virtual clock')
    .exitOverride()
    .configureOutput({ writeOut: io.out, writeErr: io.err })
    .option('--trace <file>', 'trace file: Mooncake JSONL (with sessions or agentic waits), Azure LLM inference CSV, BurstGPT CSV or Alibaba Bailian JSONL')
    .option('--trace-format <format>', 'mooncake, agentic, azure, burstgpt or bailian (default: detected from the file)')
    .option('--synthetic <spec>', "instead of --trace: a seeded synthetic workload, e.g. 'requests=2000,isl=normal:3000:800,osl=200,shared-prefix=0.5,rate=20'")
    .option('--trace-block-size <n>', `tokens per trace hash id (default: ${REPLAY_DEFAULTS.traceBlockSize}; Bailian traces 16)`)
    .option('--arrival-speedup <x>', `open loop: divide trace timestamps (and think times) by x${d(REPLAY_DEFAULTS.arrivalSpeedup)}`)
    .option('--concurrency <n>', 'closed loop: keep n requests in flight, ignoring timestamps')
    .option('--num-workers <n>', `aggregated workers, each its own engine (KV cache, DP ranks)${d(REPLAY_DEFAULTS.numWorkers)}`)
    .option('--router <mode>', `how requests are spread over the workers (disaggregated: within each pool): round-robin, random, least-loaded or kv (Dynamo's KV-aware cost function)${d(REPLAY_DEFAULTS.router)}`)
    .option('--kv-overlap-score-weight <w>', `kv router: weight of the prompt blocks still to compute against the decode load${d(REPLAY_DEFAULTS.kvOverlapScoreWeight)}`)
    .option('--router-temperature <t>', `kv router: 0 picks the lowest cost; above 0 samples a softmax over the costs${d(REPLAY_DEFAULTS.routerTemperature)}`)
    .option('--sweep <flag=v1,v2,...>', "replay every combination of the values (repeatable), in parallel; e.g. --sweep 'num-workers=4,8' --sweep 'router=round-robin,kv'", (v: string, prev: string[] = []) => [...prev, v])
    .option('--sweep-jobs <n>', 'sweeps: configurations replayed at once, each on its own thread (default: the number of CPUs)')
    .option('--output <file.jsonl>', 'write one JSON line per request, in trace order (sweeps: one line per configuration)')
    .option('--summary <file.json>', 'write the summary as JSON (sweeps: every configuration\'s row)')
    .option('--report <file.html>', 'write a self-contained HTML report: latency distributions, per-worker load over time (sweeps: the Pareto chart)')
    .option('--model-path <path>', 'local model directory or cached repo id for vocabulary, context length and KV bytes per token')
    .option('--prefill-workers <n>', 'disaggregated: prefill workers, routed by --router (needs --decode-workers; default: aggregated workers)')
    .option('--decode-workers <n>', 'disaggregated: decode workers, routed by --router (needs --prefill-workers; default: aggregated workers)')
    .option('--no-progress', 'do not print progress to stderr');
  addEngineOptions(replay);
  addKvTransferOptions(replay);
  replay.action(async (opts: RawOptions) => {
    const command = `dynamo-mocker ${argv.map(shellWord).join(' ')}`;
    if (Array.isArray(opts.sweep)) {
      const { runSweep } = await import('./replay/sweep.js');
      exitCode.value = await runSweep(opts, argv, io, command);
      return;
    }
    const config = parseReplayConfig(opts, argv);
    const { runReplay } = await import('./replay/run-replay.js');
    exitCode.value = await runReplay(config, io, command);
  });
  program.addCommand(replay);
  addRequestCommand(
    program,
    (name) => new Command(name).exitOverride().configureOutput({ writeOut: io.out, writeErr: io.err }),
    io,
    (code) => (exitCode.value = code),
  );
  return program;
}

/** A command-line word as a POSIX shell would need it (for the report's header). */
function shellWord(word: string): string {
  return /^[\w@%+=:,./-]+$/.test(word) ? word : `'${word.replace(/'/g, `'\\''`)}'`;
}

/** An error message as one line of stderr: control characters (a file's newlines quoted back) become spaces, credentials `***`. */
export function errorLine(message: string): string {
  return redactCredentials(message.replace(/[\u0000-\u001f\u007f\u2028\u2029]+/g, ' ').trim());
}

/** Runs the CLI; returns the process exit code (2 for bad flags, 1 for runtime failures). */
export async function main(argv: readonly string[], io: CliIo = processIo()): Promise<number> {
  // Before anything can log: the secrets in the environment are masked wherever they show up.
  rememberSecrets(io.env);
  const exitCode = { value: 0 };
  const program = buildProgram(io, argv, exitCode);
  try {
    await program.parseAsync(argv as string[], { from: 'user' });
    return exitCode.value;
  } catch (err) {
    if (err instanceof CommanderError) {
      if (err.code === 'commander.helpDisplayed' || err.code === 'commander.version' || err.code === 'commander.help') return 0;
      return 2;
    }
    if (err instanceof ConfigError) {
      io.err(`dynamo-mocker: ${errorLine(err.message)}\n`);
      return 2;
    }
    if (err instanceof ConnectionError) {
      io.err(`dynamo-mocker: ${errorLine(err.message)}\n`);
      return 1;
    }
    if (err instanceof TraceError) {
      io.err(`dynamo-mocker replay: ${errorLine(err.message)}\n`);
      return 2;
    }
    // Anything else is one line too; the stack trace only when DYN_LOG asks for debug output.
    const message = err instanceof Error ? err.message || err.name : String(err);
    const wantsStack = /(^|,)\s*(debug|trace)\s*(,|$)/i.test(io.env.DYN_LOG ?? '');
    if (wantsStack && err instanceof Error && err.stack) io.err(`dynamo-mocker: ${redactCredentials(err.stack)}\n`);
    else io.err(`dynamo-mocker: ${errorLine(message)}\n`);
    return 1;
  }
}
