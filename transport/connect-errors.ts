/**
 * Why a connection to the broker failed, in words a person can act on, and
 * whether trying again can help. Node's socket and TLS error codes and the
 * MQTT 3.1.1 CONNACK return codes (§3.2.2.3) are the inputs.
 */
export interface ConnectCause {
  message: string;
  /** Retrying cannot help without a change by a person (a wrong host, certificate or password). */
  definitive: boolean;
}

const TLS_CODES = /^(ERR_TLS_|ERR_SSL_|DEPTH_ZERO_SELF_SIGNED_CERT|SELF_SIGNED_CERT_IN_CHAIN|UNABLE_TO_|CERT_|HOSTNAME_MISMATCH)/;

export function connectCause(e: Error & { code?: string | number }, host: string): ConnectCause | undefined {
  const code = e.code;
  if (code === 4) return { message: 'the broker refused the login: bad user name or password', definitive: true };
  if (code === 5) return { message: 'the broker refused the login: not authorised', definitive: true };
  if (code === 1 || code === 2 || code === 3) return { message: `the broker refused the connection (CONNACK return code ${code})`, definitive: code !== 3 };
  if (typeof code !== 'string') return undefined;
  switch (code) {
    case 'ECONNREFUSED':
      return { message: `connection refused by ${host}: nothing listens on that port (is the broker running, and is the port right?)`, definitive: false };
    case 'ENOTFOUND':
      return { message: `unknown host ${host}: check the broker URL`, definitive: true };
    case 'EAI_AGAIN':
      return { message: `cannot resolve ${host} now (DNS did not answer)`, definitive: false };
    case 'EHOSTUNREACH':
    case 'ENETUNREACH':
      return { message: `no route to ${host} (${code}): check the network link`, definitive: false };
    case 'ETIMEDOUT':
      return { message: `${host} did not answer (${code}): a firewall, or the link is down`, definitive: false };
    case 'ECONNRESET':
      return { message: `the connection to ${host} was reset`, definitive: false };
    default:
      if (TLS_CODES.test(code)) return { message: `TLS with ${host} failed: ${e.message} (${code}); give the CA that signed the broker's certificate with --ca FILE`, definitive: true };
      return { message: `${e.message} (${code})`, definitive: false };
  }
}
