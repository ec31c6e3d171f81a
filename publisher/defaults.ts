/** Every default of publishing (publisher/), in one table; `fleet publish` and friends show them in their help. */
export const PUBLISH_DEFAULTS = {
  /** How long an upload waits for the update server's receipt (docs/protocol.md §4.3). */
  receiptTimeoutMs: 30_000,
  /** Chunks in flight while uploading. */
  uploadWindow: 32,
  /** Randomised SVD: extra columns sampled, and power iterations. */
  rsvdOversample: 10,
  powerIterations: 2,
  /** How long retained releases and manifests are collected before they are read. */
  settleMs: 500,
  /** A release's (assignment's) lifetime. */
  ttlSeconds: 30 * 86400,
  /** `fleet calib`: layers with at most this many inputs get the full Gram matrix, larger ones its diagonal. */
  calibMaxFull: 2048,
  /** The ONNX opset a model built by onnx-build.ts declares when its spec names none. */
  onnxOpset: 13,
} as const;
