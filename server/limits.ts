// Request limits, in one place: what the server refuses with INVALID_ARGUMENT or sheds with
// RESOURCE_EXHAUSTED instead of queueing without bound.

export interface ServingLimits {
  /** Candidates in one Recommend. @default 1000 */
  maxCandidates: number;
  /** Length of ids (user, item, request). @default 256 */
  maxIdLength: number;
  /** Rows in one ModelInfer batch. @default 65536 */
  maxBatchRows: number;
  /** Entries in one parameters map of a ModelInfer (request, input or output). @default 64 */
  maxParameters: number;
  /** Input or requested output tensors in one ModelInfer. @default 64 */
  maxTensors: number;
  /** gRPC messages in either direction. @default 16 MiB */
  maxMessageBytes: number;
  /**
   * Unary calls running at once before new ones get RESOURCE_EXHAUSTED. A call counts until its
   * response has left the server, so clients that stop reading cannot pile up answers. @default 1024
   */
  maxInflight: number;
  /**
   * Request and response bytes of calls not yet finished (answers their clients have not read
   * included) before new calls get RESOURCE_EXHAUSTED. @default 256 MiB
   */
  maxHeldBytes: number;
  /** TCP connections to the gRPC port; more are closed at once. @default 1024 */
  maxConnections: number;
  /** HTTP/2 streams (calls) open at once on one connection (SETTINGS_MAX_CONCURRENT_STREAMS). @default 100 */
  maxStreamsPerConnection: number;
  /** A connection with no call for this long is closed with GOAWAY. @default 300000 ms */
  connectionIdleMs: number;
  /** Connections are closed with GOAWAY at this age (±10 %), so clients rebalance. @default 1800000 ms */
  connectionAgeMs: number;
  /** Calls still running on a connection past its age get this long to finish. @default 30000 ms */
  connectionAgeGraceMs: number;
  /** A call whose request has not arrived in full within this is refused with DEADLINE_EXCEEDED. @default 10000 ms */
  requestReadTimeoutMs: number;
  /** A response its client has not read within this is cancelled, freeing its memory. @default 30000 ms */
  responseWriteTimeoutMs: number;
  /** Open Health/Watch streams (which need no token) before new ones get RESOURCE_EXHAUSTED. @default 1000 */
  maxWatchStreams: number;
  /** Items returned when a Recommend sets no limit and gives no candidates. @default 10 */
  defaultTrendingLimit: number;
  /** Redis budget for a request's features before it uses defaults. @default 100 ms */
  featureTimeoutMs: number;
}

export const DEFAULT_LIMITS: Readonly<ServingLimits> = Object.freeze({
  maxCandidates: 1000,
  maxIdLength: 256,
  maxBatchRows: 65_536,
  maxParameters: 64,
  maxTensors: 64,
  maxMessageBytes: 16 * 1024 * 1024,
  maxInflight: 1024,
  maxHeldBytes: 256 * 1024 * 1024,
  maxConnections: 1024,
  maxStreamsPerConnection: 100,
  connectionIdleMs: 300_000,
  connectionAgeMs: 1_800_000,
  connectionAgeGraceMs: 30_000,
  requestReadTimeoutMs: 10_000,
  responseWriteTimeoutMs: 30_000,
  maxWatchStreams: 1000,
  defaultTrendingLimit: 10,
  featureTimeoutMs: 100,
});
