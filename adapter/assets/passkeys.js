// Passkeys (WebAuthn Level 2) on the login and devices pages.
//
// The server sends the options of a ceremony as JSON with base64url
// binary fields (WebAuthn L2 §5.4, §5.5); this script turns them into
// ArrayBuffers for navigator.credentials, and the credential back into
// JSON for the server, which checks everything (challenge, origin, RP ID,
// signature, counter). Nothing here decides anything.
"use strict";

(function () {
  function b64urlToBuf(s) {
    const pad = "=".repeat((4 - (s.length % 4)) % 4);
    const bin = atob((s + pad).replace(/-/g, "+").replace(/_/g, "/"));
    const out = new Uint8Array(bin.length);
    for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
    return out.buffer;
  }

  function bufToB64url(buf) {
    const bytes = new Uint8Array(buf);
    let bin = "";
    for (let i = 0; i < bytes.length; i++) bin += String.fromCharCode(bytes[i]);
    return btoa(bin).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
  }

  function withIds(list) {
    return (list || []).map(function (c) {
      return Object.assign({}, c, { id: b64urlToBuf(c.id) });
    });
  }

  function creationOptions(json) {
    const pk = Object.assign({}, json.publicKey);
    pk.challenge = b64urlToBuf(pk.challenge);
    pk.user = Object.assign({}, pk.user, { id: b64urlToBuf(pk.user.id) });
    pk.excludeCredentials = withIds(pk.excludeCredentials);
    return pk;
  }

  function requestOptions(json) {
    const pk = Object.assign({}, json.publicKey);
    pk.challenge = b64urlToBuf(pk.challenge);
    pk.allowCredentials = withIds(pk.allowCredentials);
    return pk;
  }

  function credentialJson(cred) {
    const r = cred.response;
    const response = { clientDataJSON: bufToB64url(r.clientDataJSON) };
    if (r.attestationObject) {
      response.attestationObject = bufToB64url(r.attestationObject);
      if (r.getTransports) response.transports = r.getTransports();
    } else {
      response.authenticatorData = bufToB64url(r.authenticatorData);
      response.signature = bufToB64url(r.signature);
      response.userHandle = r.userHandle ? bufToB64url(r.userHandle) : null;
    }
    return {
      id: cred.id,
      rawId: bufToB64url(cred.rawId),
      type: cred.type,
      response: response,
      extensions: cred.getClientExtensionResults ? cred.getClientExtensionResults() : {},
    };
  }

  async function post(url, body, csrf) {
    const headers = { "Content-Type": "application/json", Accept: "application/json" };
    if (csrf) headers["X-CSRF-Token"] = csrf;
    const res = await fetch(url, {
      method: "POST",
      headers: headers,
      credentials: "same-origin",
      body: JSON.stringify(body),
    });
    let json = {};
    try {
      json = await res.json();
    } catch (e) {
      json = {};
    }
    if (!res.ok) {
      throw new Error(json.error_description || json.error || "request failed (" + res.status + ")");
    }
    return json;
  }

  function showError(el, message) {
    if (!el) return;
    el.textContent = message;
    el.hidden = false;
  }

  // ---- login page ----
  const login = document.getElementById("passkey-login");
  if (login) {
    const d = login.dataset;
    const error = document.getElementById("passkey-error");
    const button = document.getElementById("passkey-submit");
    const status = document.getElementById("passkey-status");
    let conditional = null;
    let conditionalStarted = Promise.resolve();

    const finish = async function (cred) {
      const body = { credential: credentialJson(cred) };
      if (d.req) {
        body.req = d.req;
        body.csrf_token = d.csrf;
      }
      const out = await post(d.finish, body);
      if (status) status.textContent = "Signed in.";
      window.location.assign(out.redirect || d.done || "/");
    };

    const begin = async function (username) {
      const body = { username: username || "" };
      if (d.req) {
        body.req = d.req;
        body.csrf_token = d.csrf;
      }
      return post(d.begin, body);
    };

    const run = async function (options, mediation, signal) {
      const req = { publicKey: requestOptions(options) };
      if (mediation) req.mediation = mediation;
      if (signal) req.signal = signal;
      const cred = await navigator.credentials.get(req);
      if (cred) await finish(cred);
    };

    if (d.options) {
      // The second factor after a password: the challenge is already made.
      button.addEventListener("click", function () {
        error.hidden = true;
        run(JSON.parse(d.options)).catch(function (e) {
          showError(error, e.message);
        });
      });
    } else {
      button.addEventListener("click", async function () {
        error.hidden = true;
        if (conditional) conditional.abort();
        try {
          await conditionalStarted;
        } catch (e) {
          /* replaced by this request */
        }
        const field = document.getElementById("username");
        try {
          const options = await begin(field ? field.value : "");
          await run(options);
        } catch (e) {
          showError(error, e.message);
        }
      });
      // Conditional UI (WebAuthn L3 §5.1.4 mediation "conditional"): the
      // browser offers the passkeys in the username field's autofill.
      if (
        window.PublicKeyCredential &&
        PublicKeyCredential.isConditionalMediationAvailable &&
        d.conditional === "true"
      ) {
        conditionalStarted = PublicKeyCredential.isConditionalMediationAvailable().then(
          async function (available) {
            if (!available) return;
            conditional = new AbortController();
            const options = await begin("");
            // Autofill that finds no passkey, or is dismissed, is no
            // error for the user: the form and the button remain.
            run(options, "conditional", conditional.signal).catch(function () {});
          }
        );
      }
    }
  }

  // ---- sign-up with a passkey: the account, a session, then the passkey ----
  const signup = document.getElementById("register-form");
  const wants = document.getElementById("register-passkey");
  if (signup && wants) {
    const error = document.getElementById("passkey-error");
    signup.addEventListener("submit", async function (ev) {
      if (!wants.checked) return;
      ev.preventDefault();
      error.hidden = true;
      const field = function (name) {
        const el = signup.querySelector("[name=" + name + "]");
        return el && el.value ? el.value : null;
      };
      try {
        const account = {
          username: field("username"),
          email: field("email"),
          name: field("name"),
          password: field("password"),
        };
        await post(signup.action, account);
        const session = await post("/login", {
          username: account.username || account.email,
          password: account.password,
        });
        const options = await post("/webauthn/register/begin", {}, session.csrf_token);
        const cred = await navigator.credentials.create({ publicKey: creationOptions(options) });
        await post(
          "/webauthn/register/finish",
          { credential: credentialJson(cred), label: "This device" },
          session.csrf_token
        );
        window.location.assign("/account/devices");
      } catch (e) {
        showError(error, e.message);
      }
    });
  }

  // ---- devices page: register and remove passkeys ----
  const manage = document.getElementById("passkeys-manage");
  if (manage) {
    const d = manage.dataset;
    const error = document.getElementById("passkey-error");
    const add = document.getElementById("passkey-add");
    add.addEventListener("click", async function () {
      error.hidden = true;
      try {
        const options = await post(d.begin, {}, d.csrf);
        const cred = await navigator.credentials.create({ publicKey: creationOptions(options) });
        const label = document.getElementById("passkey-label");
        await post(
          d.finish,
          { credential: credentialJson(cred), label: label && label.value ? label.value : null },
          d.csrf
        );
        window.location.reload();
      } catch (e) {
        showError(error, e.message);
      }
    });
    document.querySelectorAll("button[data-remove]").forEach(function (b) {
      b.addEventListener("click", async function () {
        error.hidden = true;
        try {
          const res = await fetch(b.dataset.remove, {
            method: "POST",
            headers: { "X-CSRF-Token": d.csrf },
            credentials: "same-origin",
          });
          if (!res.ok) throw new Error("the passkey was not removed (" + res.status + ")");
          window.location.reload();
        } catch (e) {
          showError(error, e.message);
        }
      });
    });
  }
})();
