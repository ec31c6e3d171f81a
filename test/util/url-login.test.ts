import { describe, expect, it } from 'vitest';
import { urlWithoutLogin } from '../../util/url-login.ts';

describe('urlWithoutLogin', () => {
  it('drops user:password@', () => {
    expect(urlWithoutLogin('mqtt://d1:s3cret@broker.example:1883')).toBe('mqtt://broker.example:1883');
  });

  it('drops a lone user@', () => {
    expect(urlWithoutLogin('mqtt://d1@broker.example:1883')).toBe('mqtt://broker.example:1883');
  });

  it('leaves a URL without a login as it is', () => {
    expect(urlWithoutLogin('mqtt://127.0.0.1:1883')).toBe('mqtt://127.0.0.1:1883');
    expect(urlWithoutLogin('mqtt://broker.example:1883/path@x')).toBe('mqtt://broker.example:1883/path@x');
  });

  it('works for mqtts:// and redis:// too', () => {
    expect(urlWithoutLogin('mqtts://gw:pw@central.example:8883')).toBe('mqtts://central.example:8883');
    expect(urlWithoutLogin('redis://:pw@127.0.0.1:6379/0')).toBe('redis://127.0.0.1:6379/0');
  });

  it('keeps an IPv6 host whole', () => {
    expect(urlWithoutLogin('mqtt://d1:pw@[::1]:1883')).toBe('mqtt://[::1]:1883');
    expect(urlWithoutLogin('mqtt://[::1]:1883')).toBe('mqtt://[::1]:1883');
  });

  it('keeps a percent-encoded password from leaking', () => {
    expect(urlWithoutLogin('mqtt://d1:a%2Fb%40c@h:1883')).toBe('mqtt://h:1883');
  });

  it('returns text that is no URL as it is, without throwing', () => {
    expect(urlWithoutLogin('')).toBe('');
    expect(urlWithoutLogin('not a url')).toBe('not a url');
    expect(urlWithoutLogin('mqtt://')).toBe('mqtt://');
    expect(urlWithoutLogin('://@')).toBe('://');
  });
});
