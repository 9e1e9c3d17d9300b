// The setup the server tests share: a server on an isolated runtime and a Recommend client.
import { createServiceClient, type Client } from "../../lib/grpc.js";
import { RecommendationService } from "../../gen/streamserve/v1/recommendation_pb.js";
import { startServer, type RunningServer, type ServerOptions } from "../../server/server.js";
import type { TestRuntime } from "../helpers.js";

export interface Serving {
  server: RunningServer;
  client: Client<typeof RecommendationService.method>;
  /** Closes the client and stops the server (the runtime is the caller's to clean up). */
  close(): Promise<void>;
}

export async function startServing(rt: TestRuntime, options?: ServerOptions): Promise<Serving> {
  const server = await startServer(rt, options);
  const client = createServiceClient(RecommendationService, `127.0.0.1:${server.port}`);
  return {
    server,
    client,
    async close() {
      client.close();
      await server.stop();
    },
  };
}
