import { describe, expect, it } from 'vitest';
import { urlWithoutLogin } from '../../util/url-login.ts';

/** [what, the URL, what is shown]. */
const CASES: readonly (readonly [string, string, string])[] = [
  ['user:password@ goes', 'mqtt://d1:s3cret@broker.example:1883', 'mqtt://broker.example:1883'],
  ['a lone user@ goes', 'mqtt://d1@broker.example:1883', 'mqtt://broker.example:1883'],
  ['no login: as it is', 'mqtt://127.0.0.1:1883', 'mqtt://127.0.0.1:1883'],
  ['a raw / in the password: the whole login goes', 'mqtt://u:a/b@h:1883', 'mqtt://h:1883'],
  ['a raw @ in the password: the whole login goes', 'mqtt://u:p@ss@h:1883', 'mqtt://h:1883'],
  ['an @ in a path is taken as a login (the secret side)', 'ws://broker.example:1883/path@x', 'ws://x'],
  ['a login without a scheme goes', 'u:pw@h:1883', 'h:1883'],
  ['a path without a login stays', 'ws://broker.example:8080/mqtt', 'ws://broker.example:8080/mqtt'],
  ['mqtts://', 'mqtts://gw:pw@central.example:8883', 'mqtts://central.example:8883'],
  ['redis:// with a password only', 'redis://:pw@127.0.0.1:6379/0', 'redis://127.0.0.1:6379/0'],
  ['an IPv6 host stays whole', 'mqtt://d1:pw@[::1]:1883', 'mqtt://[::1]:1883'],
  ['an IPv6 host without a login', 'mqtt://[::1]:1883', 'mqtt://[::1]:1883'],
  ['a percent-encoded password goes whole', 'mqtt://d1:a%2Fb%40c@h:1883', 'mqtt://h:1883'],
  ['empty text', '', ''],
  ['text that is no URL', 'not a url', 'not a url'],
  ['a scheme and nothing else', 'mqtt://', 'mqtt://'],
  ['a malformed URL that is only a login', '://@', '://'],
];

describe('urlWithoutLogin', () => {
  it.each(CASES)('%s', (_what, url, shown) => {
    expect(urlWithoutLogin(url)).toBe(shown);
  });
});
