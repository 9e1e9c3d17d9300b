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
  /** Unary calls running at once before new ones get RESOURCE_EXHAUSTED. @default 1024 */
  maxInflight: number;
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
  defaultTrendingLimit: 10,
  featureTimeoutMs: 100,
});
