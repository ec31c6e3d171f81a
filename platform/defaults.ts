/**
 * One resolved config from a process's options and its defaults table: the
 * shape every process follows (gateway/, rollout/, broker/, operator/ defaults.ts).
 */

/** The options with each of the table's keys they leave unset (undefined or null) taken from the table. */
export function withDefaults<O extends object, D extends { readonly [K in keyof O]?: unknown }>(given: O, table: D): O & Required<Pick<O, keyof D & keyof O>> {
  const out = { ...given } as Record<string, unknown>;
  for (const [k, v] of Object.entries(table)) out[k] ??= v;
  return out as O & Required<Pick<O, keyof D & keyof O>>;
}
