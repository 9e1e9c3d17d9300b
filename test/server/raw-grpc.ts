// gRPC by hand over node:http2, for tests that must send what a stub never would (a paused reader,
// a lying length prefix): the 5-byte message frame and the request headers of a unary call.

/** The gRPC length-prefixed message: a 0 compression flag, the length (big-endian), the bytes. */
export function grpcFrame(message: Uint8Array): Buffer {
  const frame = Buffer.alloc(5 + message.length);
  frame.writeUInt32BE(message.length, 1);
  frame.set(message, 5);
  return frame;
}

export const GRPC_REQUEST_HEADERS = { ":method": "POST", "content-type": "application/grpc", te: "trailers" } as const;
