import { MAX_WANT } from '../protocol/frames.ts';
import { UPLOAD_TTL_MS } from './content-store.ts';
import type { UpdateServerOptions } from './update-server.ts';

/**
 * Every default of the update server (server/update-server.ts), in one table:
 * the server resolves its config from it once, at construction (resolveUpdateServerConfig).
 */
export const UPDATE_SERVER_DEFAULTS = {
  /** Most chunks answered for one request (never over the protocol's MAX_WANT, docs/protocol.md §4.2). */
  maxChunksPerRequest: 256,
  /** How long retained releases are collected at start before they are re-asserted. */
  settleMs: 1000,
} as const;

/** The update server's settings with every default filled in. */
export interface ResolvedUpdateServerConfig {
  /** Never over the protocol's MAX_WANT. */
  maxChunksPerRequest: number;
  settleMs: number;
  uploadTtlMs: number;
  uploadSweepMs: number;
}

/** The settings the server runs with: what was given, the table's value for what was not. */
export function resolveUpdateServerConfig(o: Pick<UpdateServerOptions, keyof ResolvedUpdateServerConfig>): ResolvedUpdateServerConfig {
  const d = UPDATE_SERVER_DEFAULTS;
  const uploadTtlMs = o.uploadTtlMs ?? UPLOAD_TTL_MS;
  return {
    maxChunksPerRequest: Math.min(o.maxChunksPerRequest ?? d.maxChunksPerRequest, MAX_WANT),
    settleMs: o.settleMs ?? d.settleMs,
    uploadTtlMs,
    uploadSweepMs: o.uploadSweepMs ?? Math.min(uploadTtlMs / 4, 600_000),
  };
}
