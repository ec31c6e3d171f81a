import { stripControlsDeep } from './text.ts';

/**
 * Structured logs: one JSON object per line on stderr, quiet (warnings and
 * errors) by default. Fields often carry strings from the network (ids,
 * reasons, error messages): every string is stripped of control characters.
 */
export type LogLevel = 'debug' | 'info' | 'warn' | 'error' | 'silent';
const ORDER: Record<LogLevel, number> = { debug: 10, info: 20, warn: 30, error: 40, silent: 100 };

export interface Logger {
  debug(msg: string, fields?: Record<string, unknown>): void;
  info(msg: string, fields?: Record<string, unknown>): void;
  warn(msg: string, fields?: Record<string, unknown>): void;
  error(msg: string, fields?: Record<string, unknown>): void;
  child(component: string): Logger;
}

export function parseLogLevel(s: string | undefined, fallback: LogLevel = 'warn'): LogLevel {
  return s && s in ORDER ? (s as LogLevel) : fallback;
}

export function createLogger(component: string, level: LogLevel = parseLogLevel(process.env.FLEET_LOG), sink: (line: string) => void = (l) => process.stderr.write(l + '\n')): Logger {
  const emit = (lvl: LogLevel, msg: string, fields?: Record<string, unknown>): void => {
    if (ORDER[lvl] < ORDER[level]) return;
    sink(JSON.stringify(stripControlsDeep({ t: new Date().toISOString(), level: lvl, c: component, msg, ...fields })));
  };
  return {
    debug: (m, f) => emit('debug', m, f),
    info: (m, f) => emit('info', m, f),
    warn: (m, f) => emit('warn', m, f),
    error: (m, f) => emit('error', m, f),
    child: (c) => createLogger(`${component}.${c}`, level, sink),
  };
}

export const silentLogger: Logger = createLogger('silent', 'silent');
