//! Whether auth is on: decided once at start and only ever switched on while serving.
//!
//! An open server is an explicit choice (`--open`, [`Settings::open`]). Without it the server is
//! closed even with no token at all: every request but `/healthz` gets 401 until an admin creates
//! one. With it, the server is open while the data dir holds no live token; the first token
//! created turns auth on at once, and nothing turns it off again while the process runs:
//! revoking the last token leaves a closed server that refuses everyone, and says so in the log,
//! instead of one that silently serves everyone (the fail-open the issue found).
//!
//! [`Settings::open`]: crate::Settings::open

use std::sync::atomic::{AtomicBool, Ordering};

use crate::error::ServerError;
use crate::store::meta::Metadata;

/// Auth's on/off state for one serving process; see the module docs.
#[derive(Debug)]
pub struct AuthGate {
    /// True while the server serves without tokens (`--open` and no live token seen yet).
    open: AtomicBool,
    /// Set once the "no live tokens" warning was logged; cleared when a token is accepted, so
    /// each time the last token goes the log says it once.
    warned_empty: AtomicBool,
}

impl AuthGate {
    /// The gate at start: open only if `open_flag` and `live_tokens == 0`; logs which it is.
    pub fn at_start(open_flag: bool, live_tokens: u64) -> AuthGate {
        let open = open_flag && live_tokens == 0;
        if open {
            tracing::warn!(
                "--open: no access tokens, the server is OPEN to anyone who can reach it; the \
                 first `layercache-server token create` turns auth on"
            );
        } else if live_tokens == 0 {
            tracing::warn!(
                "auth is on and the data dir holds no live token: every request but /healthz \
                 gets 401 until an admin runs `layercache-server token create --role admin \
                 --namespace '*'` (or restart with --open to serve without auth)"
            );
        } else {
            if open_flag {
                tracing::warn!(
                    live_tokens,
                    "--open is ignored: the data dir holds live tokens, so auth stays on"
                );
            }
            tracing::info!(live_tokens, "auth is on: requests need a token");
        }
        AuthGate {
            open: AtomicBool::new(open),
            warned_empty: AtomicBool::new(live_tokens == 0 && !open),
        }
    }

    /// Whether this request is served without a token. While open, each call looks for a
    /// token created since (one indexed count); the first one found closes the gate for good.
    pub fn is_open(&self, db: &dyn Metadata) -> Result<bool, ServerError> {
        if !self.open.load(Ordering::Acquire) {
            return Ok(false);
        }
        if db.live_token_count()? == 0 {
            return Ok(true);
        }
        if self.open.swap(false, Ordering::AcqRel) {
            tracing::info!("a token was created: auth is on from now on");
        }
        Ok(false)
    }

    /// Called when a request's token was accepted.
    pub fn token_accepted(&self) {
        self.warned_empty.store(false, Ordering::Relaxed);
    }

    /// Called when a request was refused for its token: if no live token is left, says so once
    /// in the log and returns the advice for the client.
    pub fn refused(&self, db: &dyn Metadata) -> Result<Option<&'static str>, ServerError> {
        if db.live_token_count()? > 0 {
            return Ok(None);
        }
        if !self.warned_empty.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                "no live access token is left (the last one was revoked): the server stays \
                 closed and refuses every request until an admin creates a token"
            );
        }
        Ok(Some(
            "this server has no live token at all; its admin creates one with \
             `layercache-server token create`",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::{NamespacePattern, Role, create_token};
    use crate::store::tokens::TokenSelector;

    #[test]
    fn the_gate_opens_only_by_flag_and_never_reopens() {
        let dir = tempfile::tempdir().unwrap();
        let db = crate::store::sqlite::Db::open(&dir.path().join("db")).unwrap();
        assert!(!AuthGate::at_start(false, 0).is_open(&db).unwrap());

        let gate = AuthGate::at_start(true, 0);
        assert!(gate.is_open(&db).unwrap());
        let all: NamespacePattern = "*".parse().unwrap();
        let (_, rec) = create_token(&db, Role::Admin, &[all], Some("ops")).unwrap();
        assert!(!gate.is_open(&db).unwrap(), "the first token closes it");
        db.revoke_token(&TokenSelector::parse(&rec.id.to_string()))
            .unwrap();
        assert!(
            !gate.is_open(&db).unwrap(),
            "revoking the last keeps it closed"
        );
        assert!(gate.refused(&db).unwrap().is_some());

        assert!(!AuthGate::at_start(true, 1).is_open(&db).unwrap());
    }
}
