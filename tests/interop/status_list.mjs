// Status lists built by an independent implementation, @sd-jwt/jwt-status-list (the
// OpenWallet Foundation's sd-jwt-js), signed with node:crypto as ES256 list tokens, for
// tests/interop.rs to read with tokengate. Prints one JSON document on stdout:
// {"jwk": <public JWK>, "lists": [{"uri", "bits", "statuses", "token"}]}.
import { StatusList, createHeaderAndPayload } from '@sd-jwt/jwt-status-list';
import { generateKeyPairSync, sign } from 'node:crypto';

const { privateKey, publicKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
const jwk = { ...publicKey.export({ format: 'jwk' }), kid: 'interop', alg: 'ES256', use: 'sig' };
const b64url = (bytes) => Buffer.from(bytes).toString('base64url');

// A fixed pseudo-random sequence (no Math.random): the same lists on every run.
let seed = 0x2545f491;
const next = () => {
  seed ^= seed << 13; seed >>>= 0;
  seed ^= seed >>> 17;
  seed ^= seed << 5; seed >>>= 0;
  return seed;
};

const lists = [];
for (const bits of [1, 2, 4, 8]) {
  for (const length of [1, 7, 100, 4099]) {
    const max = bits === 8 ? 255 : (1 << bits) - 1;
    const statuses = Array.from({ length }, () => next() % (max + 1));
    const uri = `https://issuer.example/statuslists/${bits}-${length}`;
    const list = new StatusList(statuses, bits);
    const now = Math.floor(Date.now() / 1000);
    const { header, payload } = createHeaderAndPayload(
      list,
      { iss: 'https://issuer.example', sub: uri, iat: now, exp: now + 3600, ttl: 300 },
      { alg: 'ES256', typ: 'statuslist+jwt', kid: 'interop' },
    );
    const input = `${b64url(JSON.stringify(header))}.${b64url(JSON.stringify(payload))}`;
    const signature = sign('sha256', Buffer.from(input), { key: privateKey, dsaEncoding: 'ieee-p1363' });
    lists.push({ uri, bits, statuses, token: `${input}.${b64url(signature)}` });
  }
}
process.stdout.write(JSON.stringify({ jwk, lists }));
