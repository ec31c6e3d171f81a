/** Every default of the update server (server/update-server.ts), in one table. */
export const UPDATE_SERVER_DEFAULTS = {
  /** Most chunks answered for one request (never over the protocol's MAX_WANT, docs/protocol.md §4.2). */
  maxChunksPerRequest: 256,
  /** How long retained releases are collected at start before they are re-asserted. */
  settleMs: 1000,
} as const;
