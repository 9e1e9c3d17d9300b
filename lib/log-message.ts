// A log message on JetStream LOGS: protobuf bytes, a Content-Type header saying so, and a
// Nats-Msg-Id so that the stream stores a retried message once. The one home for that shape: the
// log publisher, the registry's model events and the features worker's closed windows all use it.
import { toBinary, type DescMessage, type MessageShape } from "@bufbuild/protobuf";
import { headers, type JetStreamClient, type MsgHdrs, type PubAck } from "nats";

/** What the sink decodes as protobuf (sink/log-rows.ts); a message without the header is read the same way. */
export const LOG_CONTENT_TYPE = "application/protobuf";

/** The headers of one log message: its Nats-Msg-Id (JetStream's dedup key) and Content-Type. */
export function logHeaders(msgId: string, contentType: string = LOG_CONTENT_TYPE): MsgHdrs {
  const h = headers();
  h.set("Nats-Msg-Id", msgId);
  h.set("Content-Type", contentType);
  return h;
}

export interface PublishLogOptions {
  /** @default LOG_CONTENT_TYPE */
  contentType?: string;
  /** How long to wait for the ack. @default the JetStream client's timeout */
  timeoutMs?: number;
}

/** Publishes bytes already encoded as a log message and waits for JetStream's ack. */
export function publishLogBytes(js: JetStreamClient, subject: string, msgId: string, data: Uint8Array, options: PublishLogOptions = {}): Promise<PubAck> {
  // msgID is not passed as well: the header carries it, and nats.js would only set it again.
  const headers = logHeaders(msgId, options.contentType);
  return js.publish(subject, data, options.timeoutMs === undefined ? { headers } : { headers, timeout: options.timeoutMs });
}

/** Encodes a protobuf log message and publishes it (see publishLogBytes). */
export function publishLogMessage<Desc extends DescMessage>(
  js: JetStreamClient,
  subject: string,
  msgId: string,
  schema: Desc,
  message: MessageShape<Desc>,
): Promise<PubAck> {
  return publishLogBytes(js, subject, msgId, toBinary(schema, message));
}
