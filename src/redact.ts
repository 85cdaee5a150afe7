// Credentials never reach a log line or an error message: one helper for every URL the process prints.

const MASK = '***';

/** `scheme://userinfo@`: user and password, or a bare token (`nats://token@host`). */
const URL_USERINFO = /([a-z][a-z0-9+.-]*:\/\/)[^\s/?#"'<>\\]*@/gi;
/** gRPC's resolver targets print the address without `//` (`dns:user:secret@host:2379`). */
const TARGET_USERINFO = /\b((?:dns|ipv4|ipv6|unix|unix-abstract|vsock):)(?!\/\/)[^\s/?#"'<>\\]*@/gi;
/** Secret-looking query parameters (`?token=…`, `&password=…`, `access_key=…`). */
const QUERY_SECRET = /([?&][a-z0-9_.-]*(?:token|password|passwd|pwd|secret|key|auth|signature|sig|credential)[a-z0-9_.-]*=)[^&\s#"'<>\\]+/gi;

/** Values read from the environment that are secrets whatever form a library prints them in. */
const knownSecrets = new Set<string>();

/** Shorter values would mask ordinary words; the URL patterns still cover them. */
const MIN_SECRET_LENGTH = 6;

/**
 * Remembers the secrets in the environment (passwords and tokens in NATS_SERVER / ETCD_ENDPOINTS
 * URLs, NATS_AUTH_PASSWORD/TOKEN, ETCD_AUTH_PASSWORD, HF_TOKEN, DYN_MOCKER_CONTROL_TOKEN), so that
 * redactCredentials masks them even where no URL pattern shows them.
 */
export function rememberSecrets(env: Record<string, string | undefined>): void {
  const add = (value: string | undefined): void => {
    if (value === undefined || value.length < MIN_SECRET_LENGTH) return;
    knownSecrets.add(value);
    // As it appears inside a JSON log line.
    const escaped = JSON.stringify(value).slice(1, -1);
    if (escaped !== value) knownSecrets.add(escaped);
  };
  for (const name of ['NATS_AUTH_PASSWORD', 'NATS_AUTH_TOKEN', 'NATS_AUTH_NKEY', 'ETCD_AUTH_PASSWORD', 'ETCD_AUTH_CLIENT_KEY', 'HF_TOKEN', 'HUGGING_FACE_HUB_TOKEN', 'DYN_MOCKER_CONTROL_TOKEN']) {
    add(env[name]);
  }
  for (const name of ['NATS_SERVER', 'ETCD_ENDPOINTS', 'HF_ENDPOINT']) {
    for (const url of (env[name] ?? '').split(',')) {
      const userinfo = /^[a-z][a-z0-9+.-]*:\/\/([^/?#]*)@/i.exec(url.trim())?.[1];
      if (userinfo === undefined) continue;
      const colon = userinfo.indexOf(':');
      // A bare token (`nats://token@host`) is secret; of `user:password`, the password is.
      const secret = colon === -1 ? userinfo : userinfo.slice(colon + 1);
      add(secret);
      try {
        add(decodeURIComponent(secret));
      } catch {
        // not percent-encoded
      }
    }
  }
}

/**
 * The text with every credential masked as `***`: user info in URLs (`http://user:secret@host` →
 * `http://***@host`, `nats://token@host` → `nats://***@host`, gRPC's `dns:user:secret@host`), secret
 * query parameters (`?token=***`), and any secret rememberSecrets() saw in the environment. Text with
 * nothing to mask is returned as is, cheaply (a log line pays a few `includes` checks).
 */
export function redactCredentials(text: string): string {
  let out = text;
  if (out.includes('@')) out = out.replace(URL_USERINFO, `$1${MASK}@`).replace(TARGET_USERINFO, `$1${MASK}@`);
  if (out.includes('=') && (out.includes('?') || out.includes('&'))) out = out.replace(QUERY_SECRET, `$1${MASK}`);
  for (const secret of knownSecrets) if (out.includes(secret)) out = out.split(secret).join(MASK);
  return out;
}
