/**
 * Broker and Redis URLs may carry a login (`mqtt://user:password@host:port`).
 * Before such a URL is logged, printed or put in an error message, the login
 * goes: this is the one place that does it.
 *
 * A password should be percent-encoded (RFC 3986 §3.2.1), but people paste raw
 * ones: `mqtt://u:a/b@h` or `mqtt://u:p@ss@h`. Those cannot be told apart from a
 * path holding an `@`, so this errs on the side of the secret: everything from
 * `//` to the last `@` goes (a broker URL's path rarely holds an `@`; a log
 * line missing part of a path is harmless, one holding a password is not).
 */

/** `//`, then anything, up to the last `@`. */
const LOGIN = /\/\/.*@/s;
/** No `//`: a `user:password@host` given without a scheme. */
const BARE_LOGIN = /^[^\s/]*@/;

/**
 * `url` with its `user:password@` (or `user@`) removed, for a log line or a
 * message; a URL without a login, or text that is no URL, comes back as it is.
 */
export function urlWithoutLogin(url: string): string {
  return url.includes('//') ? url.replace(LOGIN, '//') : url.replace(BARE_LOGIN, '');
}
