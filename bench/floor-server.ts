// The serving benchmark's floor: a bare grpc-js server, in a process of its own, that answers
// each configured path with a canned reply (the bytes of a real reply, captured from the server
// under test) without decoding the request. What is left is the transport: HTTP/2, grpc-js and
// the event loop, loaded the same way as the real server.
//
//   node --import tsx bench/floor-server.ts REPLIES.json
//
// REPLIES.json maps a path to its replies: [{ "requestBytes": n, "reply": base64 }, ...]; a
// request gets the reply listed for its length (ModelInfer 1 row and 64 rows share a path), or
// the first. Prints "listening PORT" on stdout once bound; SIGTERM stops it.
import { readFileSync } from "node:fs";
import * as grpc from "@grpc/grpc-js";

/** Canned replies of one path, chosen by the request's length. */
export type FloorReplies = Record<string, { requestBytes: number; reply: string }[]>;

function serve(replies: FloorReplies): Promise<number> {
  const server = new grpc.Server();
  const identity = (b: Buffer) => b;
  for (const [path, choices] of Object.entries(replies)) {
    const byLength = new Map(choices.map((c) => [c.requestBytes, Buffer.from(c.reply, "base64")]));
    const fallback = Buffer.from(choices[0]!.reply, "base64");
    const method = {
      path,
      requestStream: false,
      responseStream: false,
      requestSerialize: identity,
      requestDeserialize: identity,
      responseSerialize: identity,
      responseDeserialize: identity,
    };
    server.addService(
      { call: method },
      { call: (call: grpc.ServerUnaryCall<Buffer, Buffer>, cb: grpc.sendUnaryData<Buffer>) => cb(null, byLength.get(call.request.length) ?? fallback) },
    );
  }
  process.once("SIGTERM", () => server.forceShutdown());
  return new Promise((resolve, reject) =>
    server.bindAsync("127.0.0.1:0", grpc.ServerCredentials.createInsecure(), (err, port) => (err ? reject(err) : resolve(port))),
  );
}

const file = process.argv[2];
if (!file) {
  console.error("usage: floor-server.ts REPLIES.json");
  process.exit(2);
}
const port = await serve(JSON.parse(readFileSync(file, "utf8")) as FloorReplies);
console.log(`listening ${port}`);
