// `npm run bench -- fast-paths`: the client CPU of each hand-written fast path next to its library
// version, in the same run: the features store's Redis client (lib/resp.ts against ioredis behind
// the same RespConnection) and the JetStream pull (lib/jetstream-pull-fast.ts against nats.js fetch()).
// CPU is this process's user + system time (process.cpuUsage), not wall time: Redis and
// nats-server work in their own processes, and a shared machine's waits do not count.
import { loadavg } from "node:os";
import { AckPolicy, DeliverPolicy, nanos } from "nats";
import { createRuntime } from "../lib/runtime.js";
import { deleteNamespace } from "../lib/nats.js";
import { deleteKeysWithPrefix } from "../lib/redis.js";
import { connectResp, REDIS_CLIENTS } from "../lib/resp-client.js";
import { RespWriter } from "../lib/resp.js";
import { createPullConsumer, PULL_IMPLEMENTATIONS, type PullConsumer, type PulledMessage } from "../lib/jetstream-pull.js";
import { fmt, header, row } from "./measure.js";

const COMMANDS = 4000; // a batch of 2000 events is about this many commands
const REDIS_ROUNDS = Number(process.env.BENCH_ROUNDS ?? 50);
const MESSAGES = Number(process.env.BENCH_MESSAGES ?? 50_000);
const BATCH = 2000;

const cpuMicros = (since: NodeJS.CpuUsage) => {
  const d = process.cpuUsage(since);
  return d.user + d.system;
};

export async function benchFastPaths(): Promise<void> {
  const namespace = `bench_fast_${process.pid}`;
  const rt = createRuntime({ namespace, logLevel: "silent" });
  const W = [44, 14, 14, 12];
  try {
    header(`fast paths: client CPU per operation, hand-written against library (same run), load ${loadAverage()}`);
    row(["path", "µs/op", "library µs/op", "library ×"], W);
    // Each measured twice, alternating, the lower kept: the first rounds also pay for the JIT.
    const redis: Record<string, number> = {};
    for (let round = 0; round < 2; round++)
      for (const client of REDIS_CLIENTS)
        redis[client] = Math.min(redis[client] ?? Infinity, await redisCpuPerCommand(rt.names.redisPrefix, rt.config.redisUrl, client));
    row(["Redis: 4000 commands a send (resp | ioredis)", fmt(redis.resp!, 2), fmt(redis.ioredis!, 2), fmt(redis.ioredis! / redis.resp!, 1)], W);
    const nc = await rt.nats();
    const pull: Record<string, number> = {};
    for (let round = 0; round < 2; round++)
      for (const impl of PULL_IMPLEMENTATIONS) pull[impl] = Math.min(pull[impl] ?? Infinity, await pullCpuPerMessage(rt, nc, impl, round));
    row(["JetStream: pull + ack (fast | fetch())", fmt(pull.fast!, 2), fmt(pull.library!, 2), fmt(pull.library! / pull.fast!, 1)], W);
    console.log(
      `(${REDIS_ROUNDS} sends of ${COMMANDS} HSETs a client; ${MESSAGES} messages acked in batches of ${BATCH} a consumer; the better of two alternating runs each)`,
    );
  } finally {
    await deleteKeysWithPrefix(rt.redis(), rt.names.redisPrefix).catch(() => undefined);
    await deleteNamespace(await rt.nats(), rt.names).catch(() => undefined);
    await rt.close();
  }
}

async function redisCpuPerCommand(prefix: string, url: string, client: (typeof REDIS_CLIENTS)[number]): Promise<number> {
  const conn = connectResp(url, { client, name: `bench-${client}` });
  try {
    const batch = () => {
      const w = new RespWriter();
      for (let i = 0; i < COMMANDS; i++) w.args(["HSET", `${prefix}bench:${i % 500}`, `f${i}`, i * 1.5]);
      return w;
    };
    for (let r = 0; r < 5; r++) await conn.send([batch()]); // warm-up
    const t = process.cpuUsage();
    for (let r = 0; r < REDIS_ROUNDS; r++) await conn.send([batch()]);
    return cpuMicros(t) / (REDIS_ROUNDS * COMMANDS);
  } finally {
    conn.close();
  }
}

async function pullCpuPerMessage(
  rt: ReturnType<typeof createRuntime>,
  nc: Awaited<ReturnType<typeof rt.nats>>,
  impl: "fast" | "library",
  round: number,
): Promise<number> {
  const jsm = await nc.jetstreamManager();
  const stream = `${rt.names.eventsStream}_FAST_${impl.toUpperCase()}_${round}`;
  const subject = `${stream.toLowerCase()}.x`;
  await jsm.streams.add({ name: stream, subjects: [subject] });
  const js = nc.jetstream();
  const payload = new TextEncoder().encode(JSON.stringify({ event_id: "e", user_id: "u1", event_type: "click", page_id: "p", event_time: Date.now() }));
  for (let i = 0; i < MESSAGES; i += 500) await Promise.all(Array.from({ length: Math.min(500, MESSAGES - i) }, () => js.publish(subject, payload)));
  await jsm.consumers.add(stream, {
    durable_name: "bench",
    ack_policy: AckPolicy.Explicit,
    deliver_policy: DeliverPolicy.All,
    ack_wait: nanos(60_000),
    max_ack_pending: 4 * BATCH,
  });
  let pc: PullConsumer | undefined;
  try {
    let n = 0;
    let held: PulledMessage[] = [];
    const t = process.cpuUsage();
    await new Promise<void>((resolve) => {
      pc = createPullConsumer(nc, {
        implementation: impl,
        stream,
        consumer: "bench",
        maxWaiting: 2 * BATCH,
        onMessage: (m) => {
          held.push(m);
          if (++n === MESSAGES || held.length === BATCH) {
            pc!.ackAll(held);
            held = [];
          }
          if (n === MESSAGES) resolve();
        },
      });
    });
    await nc.flush();
    return cpuMicros(t) / MESSAGES;
  } finally {
    pc?.stop();
    await jsm.streams.delete(stream).catch(() => undefined);
  }
}

function loadAverage(): string {
  return loadavg()
    .map((x) => x.toFixed(2))
    .join(" ");
}
