//! `GET /dev/outbox`: the mails of the outbox, newest first, as an HTML
//! page — the way to read codes on a development machine, where no SMTP
//! server is configured. The route exists only then ([`routes`]); with an
//! SMTP server it is 404.

use askama::Template;
use askama_web::WebTemplate;
use axum::extract::State;
use axum::routing::get;
use axum::Router;

use crate::paths;
use crate::provider::AppState;
use crate::web::WebError;

/// Mails the page shows.
pub const PAGE_SIZE: i64 = 50;

/// One mail on the page.
pub struct OutboxEntry {
    pub to: String,
    pub subject: String,
    pub body: String,
    /// RFC 3339, UTC.
    pub created: String,
}

#[derive(Template, WebTemplate)]
#[template(path = "adapter/outbox.html")]
pub struct OutboxPage {
    pub title: String,
    pub mails: Vec<OutboxEntry>,
}

/// The development outbox's route, when `state` has no SMTP server;
/// otherwise no route at all.
pub fn routes(state: &AppState) -> Router<AppState> {
    if state.mailer.has_smtp() {
        Router::new()
    } else {
        Router::new().route(paths::DEV_OUTBOX, get(outbox))
    }
}

async fn outbox(State(st): State<AppState>) -> Result<OutboxPage, WebError> {
    let rows = st.mailer.store().recent_mail(PAGE_SIZE).await?;
    Ok(OutboxPage {
        title: st.title().to_owned(),
        mails: rows
            .into_iter()
            .map(|r| OutboxEntry {
                created: rfc3339(r.created_at),
                to: r.recipient,
                subject: r.subject,
                body: r.body,
            })
            .collect(),
    })
}

fn rfc3339(unix: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| unix.to_string())
}
