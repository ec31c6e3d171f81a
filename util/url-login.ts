/**
 * Broker and Redis URLs may carry a login (`mqtt://user:password@host:port`).
 * Before such a URL is logged, printed or put in an error message, the login
 * goes: this is the one place that does it.
 */

/** The first `//user[:password]@` of a URL: everything between `//` and the `@` before the next `/`. */
const LOGIN = /\/\/[^@/]*@/;

/**
 * `url` with its `user:password@` (or `user@`) removed, for a log line or a
 * message; a URL without a login, or text that is no URL, comes back as it is.
 */
export function urlWithoutLogin(url: string): string {
  return url.replace(LOGIN, '//');
}
