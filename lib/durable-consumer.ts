// The durable JetStream consumers the parts read with (features, sink), created or brought up to
// date in one place. Invariant: a consumer that exists keeps its messages; only its tunables
// (ack wait, most unacked) are changed, and one that reads other subjects is an error, not reused.
import type { ConsumerConfig, JetStreamManager } from "nats";
import { isNotFound } from "./nats.js";

/** What a part asks of its consumer: a durable name, the subject it reads, and the rest of its config. */
export type DurableConsumerConfig = Partial<ConsumerConfig> & { durable_name: string; filter_subject: string };

/**
 * Creates the consumer if it is missing, or updates its ack wait and most unacked to the config's
 * when they differ. Several workers may race to create it: whichever loses finds it made.
 */
export async function ensureConsumer(jsm: Pick<JetStreamManager, "consumers">, stream: string, config: DurableConsumerConfig): Promise<void> {
  const name = config.durable_name;
  try {
    const info = await jsm.consumers.info(stream, name);
    if (info.config.filter_subject !== config.filter_subject) {
      throw new Error(`consumer ${name} on ${stream} filters "${info.config.filter_subject}", expected "${config.filter_subject}"; delete it to recreate`);
    }
    if (info.config.ack_wait !== config.ack_wait || info.config.max_ack_pending !== config.max_ack_pending) {
      await jsm.consumers.update(stream, name, { ack_wait: config.ack_wait, max_ack_pending: config.max_ack_pending });
    }
    return;
  } catch (err) {
    if (!isNotFound(err)) throw err;
  }
  try {
    await jsm.consumers.add(stream, config);
  } catch (err) {
    // Another worker created it between our info and add: fine if it now exists.
    await jsm.consumers.info(stream, name).catch(() => {
      throw err;
    });
  }
}
