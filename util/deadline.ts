/** No Node built-ins here: browser code (the dashboard bundle) reaches this through rollout/inventory.ts. */

/** Resolves with `p`'s outcome, or `'timeout'` after `ms` (the timer is cleared as soon as either comes). */
export async function withDeadline<T>(p: Promise<T>, ms: number): Promise<{ value: T } | 'timeout'> {
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<'timeout'>((r) => {
    timer = setTimeout(() => r('timeout'), Math.max(0, ms));
  });
  try {
    return await Promise.race([p.then((value) => ({ value })), late]);
  } finally {
    clearTimeout(timer);
  }
}
