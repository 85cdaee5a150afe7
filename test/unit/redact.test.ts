// Credentials are masked in every URL form a log line or an error message may carry.
import { describe, expect, it } from 'vitest';
import { ServerUrlError, parseEtcdEndpoints, parseNatsServers } from '../../src/adapters/server-urls.js';
import { errorLine } from '../../src/cli.js';
import { redactCredentials, rememberSecrets } from '../../src/redact.js';

describe('redactCredentials', () => {
  it.each([
    ['cannot connect to etcd at http://user:secret@127.0.0.1:2379 (ETCD_ENDPOINTS)', 'cannot connect to etcd at http://***@127.0.0.1:2379 (ETCD_ENDPOINTS)'],
    ['https://root:pw@10.0.0.1:2379,https://u2:pw2@10.0.0.2:2379', 'https://***@10.0.0.1:2379,https://***@10.0.0.2:2379'],
    ['nats://user:pass@nats.local:4222', 'nats://***@nats.local:4222'],
    ['nats://s3cr3t-token@nats.local', 'nats://***@nats.local'],
    ['Name resolution failed for target dns:user:secret@127.0.0.1:1', 'Name resolution failed for target dns:***@127.0.0.1:1'],
    ['http://u:p@ss@host:1/path', 'http://***@host:1/path'],
    ['http://u:p%40ss@host:1', 'http://***@host:1'],
    ['GET https://hub.example/x?token=abc123&rev=main', 'GET https://hub.example/x?token=***&rev=main'],
    ['https://h/x?a=1&password=hunter2#frag', 'https://h/x?a=1&password=***#frag'],
    ['https://h/x?access_key=AKIA1&sig=zz', 'https://h/x?access_key=***&sig=***'],
  ])('%s', (text, masked) => {
    expect(redactCredentials(text)).toBe(masked);
  });

  it('leaves text without credentials as it is', () => {
    for (const text of ['http://127.0.0.1:2379', 'user@example.com wrote', 'a=b and c&d', 'tcp://127.0.0.1:5557', '{"level":30,"msg":"serving"}']) {
      expect(redactCredentials(text)).toBe(text);
    }
  });

  it('keeps a JSON log line valid JSON', () => {
    const line = JSON.stringify({ level: 50, msg: 'cannot reach http://user:secret@h:1', err: { message: 'dns:user:secret@h:1 failed', url: 'nats://tok@h' } });
    const masked = redactCredentials(line);
    expect(masked).not.toContain('secret');
    expect(masked).not.toContain('tok@');
    expect(JSON.parse(masked)).toMatchObject({ msg: 'cannot reach http://***@h:1', err: { message: 'dns:***@h:1 failed', url: 'nats://***@h' } });
  });

  it('masks the secrets of the environment in any form, URL or not', () => {
    rememberSecrets({
      ETCD_ENDPOINTS: 'http://root:etcd-pa55word@127.0.0.1:1',
      NATS_SERVER: 'nats://nats-t0ken-xyz@127.0.0.1:2',
      HF_TOKEN: 'hf_abcdefgh',
      NATS_AUTH_PASSWORD: 'pw', // too short to mask as a word
    });
    expect(redactCredentials('connect to root:etcd-pa55word@127.0.0.1:1 failed')).toBe('connect to root:***@127.0.0.1:1 failed');
    expect(redactCredentials('token nats-t0ken-xyz refused; Bearer hf_abcdefgh')).toBe('token *** refused; Bearer ***');
    expect(redactCredentials('pwd and pw stay')).toBe('pwd and pw stay');
  });

  it('errorLine makes one line of a message quoting a file', () => {
    expect(errorLine(`bad JSON: "hello\nworld\r\n\t"`)).toBe('bad JSON: "hello world "');
    expect(errorLine('at http://a:b@h:1\n')).toBe('at http://***@h:1');
  });
});

describe('server URL lists', () => {
  it('ETCD_ENDPOINTS: user info is split off the hosts (the client never sees it)', () => {
    expect(parseEtcdEndpoints(undefined)).toEqual({ hosts: ['http://localhost:2379'], auth: null });
    expect(parseEtcdEndpoints(' http://u:p%40ss@10.0.0.1:2379 , https://10.0.0.2:2379')).toEqual({
      hosts: ['http://10.0.0.1:2379', 'https://10.0.0.2:2379'],
      auth: { user: 'u', pass: 'p@ss' },
    });
    expect(parseEtcdEndpoints('http://u:p@ss@[::1]:2379').hosts).toEqual(['http://[::1]:2379']);
  });

  it.each(['127.0.0.1:2379', 'grpc://h:1', 'http://', 'http://h:99999', ' , '])('ETCD_ENDPOINTS %j is refused', (raw) => {
    expect(() => parseEtcdEndpoints(raw)).toThrow(ServerUrlError);
  });

  it('a refused URL never shows its password', () => {
    try {
      parseEtcdEndpoints('ftp://user:topsecret@h:1');
      expect.unreachable();
    } catch (err) {
      expect((err as Error).message).toBe("must list http(s)://host:port URLs, got 'ftp://***@h:1'");
    }
  });

  it('NATS_SERVER: host:port per server, user info as auth', () => {
    expect(parseNatsServers('nats://a:b@h1,nats://h2:4333')).toEqual({ servers: ['h1:4222', 'h2:4333'], auth: { user: 'a', pass: 'b' } });
    expect(parseNatsServers('nats://tok@h')).toEqual({ servers: ['h:4222'], auth: { user: 'tok', pass: '' } });
    expect(() => parseNatsServers('http://h:4222')).toThrow("must be a nats://host:port URL, got 'http://h:4222'");
  });
});
