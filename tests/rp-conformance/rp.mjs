// Runs openid-client (v6, an OpenID Certified relying party library) against
// an OpenID Provider and prints one JSON object on stdout.
//
// Inputs (environment, or --name=value arguments that win over it):
//   ISSUER                    the provider's issuer (discovery at {ISSUER}/.well-known/openid-configuration)
//   CLIENT_ID, CLIENT_SECRET  a confidential client allowed client_credentials (client_secret_basic)
//   REFRESH_TOKEN             optional: a refresh token of that client, for the refresh step
//   POST_LOGOUT_REDIRECT_URI  optional: for the end-session URL (a URI registered for the client)
//   SCOPE                     optional: scope of the client_credentials request
//
// Steps (each result goes into the output; the first failure stops the run,
// prints {"error": {"step", "name", "code", "message", ...}} and exits 1):
//   1. discovery (OIDC Discovery 1.0 §4; the issuer must match exactly)
//   2. client_credentials grant (RFC 6749 §4.4)
//   3. introspection of that access token (RFC 7662 §2): active
//   4. revocation of it (RFC 7009 §2)
//   5. introspection again: inactive (RFC 7009 §2.2, RFC 7662 §2.2)
//   6. with REFRESH_TOKEN: refresh_token grant (RFC 6749 §6); openid-client
//      validates the new ID token (OIDC Core §12.2)
//   7. with REFRESH_TOKEN: the end-session URL (OpenID RP-Initiated Logout 1.0 §2)
//
// Plain http issuers are allowed (loopback test chains).

import * as client from 'openid-client';

function input(name) {
  const prefix = `--${name.toLowerCase().replaceAll('_', '-')}=`;
  const arg = process.argv.slice(2).find((a) => a.startsWith(prefix));
  if (arg !== undefined) return arg.slice(prefix.length);
  const value = process.env[name];
  return value === undefined || value === '' ? undefined : value;
}

function required(name) {
  const value = input(name);
  if (value === undefined) {
    fail('input', new Error(`${name} is required (environment variable or --${name.toLowerCase().replaceAll('_', '-')}=)`));
  }
  return value;
}

function fail(step, err) {
  const error = {
    step,
    name: err?.name ?? 'Error',
    code: err?.code ?? null,
    message: err?.message ?? String(err),
  };
  // OAuth error responses (RFC 6749 §5.2) as openid-client reports them.
  if (err?.error !== undefined) error.error = err.error;
  if (err?.error_description !== undefined) error.error_description = err.error_description;
  if (err?.status !== undefined) error.status = err.status;
  if (err?.cause?.message !== undefined) error.cause = err.cause.message;
  process.stdout.write(`${JSON.stringify({ error })}\n`);
  process.exit(1);
}

async function step(name, fn) {
  try {
    return await fn();
  } catch (err) {
    return fail(name, err);
  }
}

/// A JWT's JOSE header and payload, not verified (for reporting only).
function decodeJwt(jwt) {
  const [header, payload] = jwt.split('.').slice(0, 2)
    .map((part) => JSON.parse(Buffer.from(part, 'base64url').toString('utf8')));
  return { header, payload };
}

const issuer = required('ISSUER');
const clientId = required('CLIENT_ID');
const clientSecret = required('CLIENT_SECRET');
const refreshToken = input('REFRESH_TOKEN');
const postLogoutRedirectUri = input('POST_LOGOUT_REDIRECT_URI');
const scope = input('SCOPE');

const out = {};

const config = await step('discovery', () => client.discovery(
  new URL(issuer),
  clientId,
  undefined,
  client.ClientSecretBasic(clientSecret),
  { execute: [client.allowInsecureRequests] },
));
const metadata = config.serverMetadata();
out.discovery = {
  issuer: metadata.issuer,
  token_endpoint: metadata.token_endpoint ?? null,
  introspection_endpoint: metadata.introspection_endpoint ?? null,
  revocation_endpoint: metadata.revocation_endpoint ?? null,
  end_session_endpoint: metadata.end_session_endpoint ?? null,
};

const cc = await step('client_credentials', () => client.clientCredentialsGrant(
  config,
  scope === undefined ? {} : { scope },
));
const ccToken = decodeJwt(cc.access_token);
out.client_credentials = {
  token_type: cc.token_type,
  expires_in: cc.expires_in ?? null,
  scope: cc.scope ?? null,
  refresh_token_issued: cc.refresh_token !== undefined,
  id_token_issued: cc.id_token !== undefined,
  access_token_typ: ccToken.header.typ ?? null,
  access_token_client_id: ccToken.payload.client_id ?? null,
  access_token_sub: ccToken.payload.sub ?? null,
};

const before = await step('introspection', () => client.tokenIntrospection(config, cc.access_token));
out.introspection = {
  active: before.active,
  client_id: before.client_id ?? null,
  token_type: before.token_type ?? null,
  sub: before.sub ?? null,
  iss: before.iss ?? null,
  exp_matches_token: before.exp === ccToken.payload.exp,
};

await step('revocation', () => client.tokenRevocation(config, cc.access_token, { token_type_hint: 'access_token' }));
out.revocation = { ok: true };

const after = await step('introspection_after_revocation', () => client.tokenIntrospection(config, cc.access_token));
out.introspection_after_revocation = { active: after.active, fields: Object.keys(after).sort() };

if (refreshToken !== undefined) {
  const refreshed = await step('refresh', () => client.refreshTokenGrant(config, refreshToken));
  const claims = refreshed.claims();
  out.refresh = {
    token_type: refreshed.token_type,
    access_token_typ: decodeJwt(refreshed.access_token).header.typ ?? null,
    id_token_issued: refreshed.id_token !== undefined,
    refresh_token_rotated: refreshed.refresh_token !== undefined && refreshed.refresh_token !== refreshToken,
    id_token_claims: claims === undefined ? null : {
      iss: claims.iss,
      sub: claims.sub,
      aud: claims.aud,
    },
  };
  const endSession = await step('end_session_url', () => {
    const parameters = { id_token_hint: refreshed.id_token, state: 'rp-conformance-state' };
    if (postLogoutRedirectUri !== undefined) parameters.post_logout_redirect_uri = postLogoutRedirectUri;
    return client.buildEndSessionUrl(config, parameters);
  });
  out.end_session = {
    endpoint: `${endSession.origin}${endSession.pathname}`,
    id_token_hint_is_the_refreshed_id_token: endSession.searchParams.get('id_token_hint') === refreshed.id_token,
    post_logout_redirect_uri: endSession.searchParams.get('post_logout_redirect_uri'),
    state: endSession.searchParams.get('state'),
    client_id: endSession.searchParams.get('client_id'),
  };
}

process.stdout.write(`${JSON.stringify(out)}\n`);
