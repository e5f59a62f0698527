//! Real headless Chromium over WebDriver.
//!
//! [`Browser::start`] launches Debian's `/usr/bin/chromedriver` on a free
//! loopback port (killed when the `Browser` is dropped), waits until it is
//! ready and opens a fantoccini session on `/usr/bin/chromium` with a fresh
//! profile. Missing binaries are an error, never a skip: run
//! `scripts/install-test-deps.sh`. `CHROMIUM_BIN` / `CHROMEDRIVER_BIN`
//! override the paths.

use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use serde_json::json;

/// Default location of Debian's `chromium` package binary.
pub const CHROMIUM: &str = "/usr/bin/chromium";
/// Default location of Debian's `chromium-driver` package binary.
pub const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// Paths of the browser and its driver (env overrides, else Debian's).
pub fn binaries() -> (PathBuf, PathBuf) {
    let pick = |var: &str, default: &str| {
        std::env::var_os(var)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(default))
    };
    (
        pick("CHROMIUM_BIN", CHROMIUM),
        pick("CHROMEDRIVER_BIN", CHROMEDRIVER),
    )
}

/// A chromedriver process and one WebDriver session.
pub struct Browser {
    pub client: fantoccini::Client,
    driver: Child,
    out_dir: PathBuf,
    shots: AtomicU32,
    _profile: tempfile::TempDir,
}

fn free_port() -> anyhow::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

impl Browser {
    /// Starts chromedriver and a headless Chromium session. Screenshots and
    /// the driver log go to `out_dir`.
    pub async fn start(out_dir: &Path) -> anyhow::Result<Self> {
        let (chromium, chromedriver) = binaries();
        for (bin, pkg) in [(&chromium, "chromium"), (&chromedriver, "chromium-driver")] {
            if !bin.exists() {
                bail!(
                    "{} is missing: the browser test needs Debian's `{pkg}` package \
                     (run scripts/install-test-deps.sh, or `apt-get install -y chromium chromium-driver`)",
                    bin.display()
                );
            }
        }
        let port = free_port()?;
        let log_path = out_dir.join("chromedriver.log");
        let mut driver = Command::new(&chromedriver)
            .arg(format!("--port={port}"))
            .arg(format!("--log-path={}", log_path.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            // Its own process group, so Drop also ends the Chromium processes
            // it started when a test fails before closing the session.
            .process_group(0)
            .spawn()
            .with_context(|| format!("spawning {}", chromedriver.display()))?;

        // Wait for `GET /status` to report ready.
        let http = reqwest::Client::new();
        let status_url = format!("http://127.0.0.1:{port}/status");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(exit) = driver.try_wait()? {
                bail!(
                    "chromedriver exited early with {exit}; see {}",
                    log_path.display()
                );
            }
            let ready = match http.get(&status_url).send().await {
                Ok(r) => r
                    .json::<serde_json::Value>()
                    .await
                    .ok()
                    .and_then(|v| v.pointer("/value/ready").and_then(|b| b.as_bool()))
                    .unwrap_or(false),
                Err(_) => false,
            };
            if ready {
                break;
            }
            if Instant::now() > deadline {
                kill_group(&mut driver);
                bail!("chromedriver did not become ready on port {port} within 30 s");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }

        let profile = tempfile::Builder::new()
            .prefix("e2e-chromium-")
            .tempdir()
            .context("creating a Chromium profile dir")?;
        let mut caps = serde_json::Map::new();
        caps.insert("browserName".into(), json!("chrome"));
        caps.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": chromium.display().to_string(),
                "args": [
                    "--headless",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-quic",
                    "--no-first-run",
                    "--disable-background-networking",
                    "--disable-component-update",
                    "--disable-sync",
                    "--disable-dev-shm-usage",
                    "--window-size=1280,1000",
                    format!("--user-data-dir={}", profile.path().display()),
                ],
            }),
        );
        let builder = fantoccini::ClientBuilder::rustls();
        let client = match builder {
            Ok(mut b) => b
                .capabilities(caps)
                .connect(&format!("http://127.0.0.1:{port}"))
                .await
                .map_err(|e| anyhow!("WebDriver session on {}: {e}", chromium.display())),
            Err(e) => Err(anyhow!("fantoccini rustls connector: {e}")),
        };
        let client = match client {
            Ok(c) => c,
            Err(e) => {
                kill_group(&mut driver);
                return Err(e);
            }
        };
        Ok(Browser {
            client,
            driver,
            out_dir: out_dir.to_path_buf(),
            shots: AtomicU32::new(0),
            _profile: profile,
        })
    }

    /// Saves a PNG of the viewport as `<out_dir>/<nn>-<name>.png`.
    pub async fn screenshot(&self, name: &str) -> anyhow::Result<PathBuf> {
        let n = self.shots.fetch_add(1, Ordering::SeqCst) + 1;
        let png = self
            .client
            .screenshot()
            .await
            .map_err(|e| anyhow!("screenshot {name}: {e}"))?;
        if !png.starts_with(b"\x89PNG") {
            bail!("screenshot {name} is not a PNG");
        }
        let path = self.out_dir.join(format!("{n:02}-{name}.png"));
        std::fs::write(&path, png).with_context(|| format!("writing {}", path.display()))?;
        Ok(path)
    }

    /// Adds a virtual authenticator to the session (WebAuthn L2 §11.3,
    /// "Add Virtual Authenticator", implemented by chromedriver): a CTAP2
    /// platform authenticator that verifies the user, and stores
    /// discoverable credentials when `resident`. Returns its id.
    pub async fn add_virtual_authenticator(&self, resident: bool) -> anyhow::Result<String> {
        let answer = self
            .client
            .issue_cmd(VirtualAuthenticator::Add { resident })
            .await
            .map_err(|e| anyhow!("adding a virtual authenticator: {e}"))?;
        answer
            .as_str()
            .map(String::from)
            .ok_or_else(|| anyhow!("no authenticator id in {answer}"))
    }

    /// Removes the virtual authenticator `id` and its credentials
    /// (WebAuthn L2 §11.4).
    pub async fn remove_virtual_authenticator(&self, id: &str) -> anyhow::Result<()> {
        self.client
            .issue_cmd(VirtualAuthenticator::Remove { id: id.to_string() })
            .await
            .map_err(|e| anyhow!("removing the virtual authenticator: {e}"))?;
        Ok(())
    }

    /// Types `username` and `password` into a login form's `username` and
    /// `password` fields (the upstream-test-server's form).
    pub async fn type_credentials(
        form: &fantoccini::elements::Element,
        username: &str,
        password: &str,
    ) -> anyhow::Result<()> {
        for (id, value) in [("username", username), ("password", password)] {
            form.find(fantoccini::Locator::Id(id))
                .await?
                .send_keys(value)
                .await?;
        }
        Ok(())
    }

    /// Ends the WebDriver session (the driver process goes on Drop).
    pub async fn close(self) -> anyhow::Result<()> {
        self.client
            .clone()
            .close()
            .await
            .map_err(|e| anyhow!("closing the WebDriver session: {e}"))
    }
}

/// `POST /session/{id}/webauthn/authenticator` (WebAuthn L2 §11.3) and
/// `DELETE …/authenticator/{authenticatorId}` (§11.4).
#[derive(Debug)]
enum VirtualAuthenticator {
    Add { resident: bool },
    Remove { id: String },
}

impl fantoccini::wd::WebDriverCompatibleCommand for VirtualAuthenticator {
    fn endpoint(
        &self,
        base_url: &url::Url,
        session_id: Option<&str>,
    ) -> Result<url::Url, url::ParseError> {
        let base = format!(
            "session/{}/webauthn/authenticator",
            session_id.unwrap_or_default()
        );
        match self {
            VirtualAuthenticator::Add { .. } => base_url.join(&base),
            VirtualAuthenticator::Remove { id } => base_url.join(&format!("{base}/{id}")),
        }
    }

    fn method_and_body(&self, _: &url::Url) -> (axum::http::Method, Option<String>) {
        match self {
            VirtualAuthenticator::Add { resident } => {
                let body = json!({
                    "protocol": "ctap2",
                    "transport": "internal",
                    "hasResidentKey": resident,
                    "hasUserVerification": true,
                    "isUserVerified": true,
                });
                (axum::http::Method::POST, Some(body.to_string()))
            }
            VirtualAuthenticator::Remove { .. } => (axum::http::Method::DELETE, None),
        }
    }
}

/// Kills the process group we created for chromedriver (it and the browser
/// it launched), then reaps chromedriver.
fn kill_group(driver: &mut Child) {
    let group = format!("-{}", driver.id());
    let _ = Command::new("kill")
        .args(["-KILL", "--", &group])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    let _ = driver.kill();
    let _ = driver.wait();
}

impl Drop for Browser {
    fn drop(&mut self) {
        kill_group(&mut self.driver);
    }
}
