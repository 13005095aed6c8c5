//! Access control: bearer tokens with a [`Role`] and the [`NamespacePattern`]s they may touch.
//!
//! Auth is on unless the server was started with `--open` and no live token ([`AuthGate`]); it
//! never turns itself off. Tokens are managed with `layercache-server token ...`
//! ([`create_token`], [`Metadata::list_tokens`], [`Metadata::revoke_token`]); only their sha256 is stored.
//! The token is read from SQLite on every request, so a token created or revoked by the CLI while
//! the server runs takes effect at once.
//!
//! The policy, in one place ([`authorize`] classifies every route with [`need_of`]):
//! - `/healthz` answers everyone.
//! - Without a valid token: 401 `unauthorized` with `WWW-Authenticate: Bearer`, on every other
//!   route, unknown ones included, so nothing leaks to an anonymous caller.
//! - `read`: GET/HEAD of images, manifests and blobs, `POST /v1/lookup`, `/v1/stats`,
//!   `/v1/entries`. `write`: read + image PUT, manifest commit, blob PUT and POST, `POST /v1/blobs/missing`.
//!   `admin`: everything, including DELETE. A route this module does not know needs `admin`.
//! - Namespaces: routes naming one (`/v1/images/{ns}/...`) need the role in that namespace.
//!   `POST /v1/lookup` is refused (403) if any namespace it lists is not readable: a misconfigured
//!   fallback shows up as an error instead of a silent miss. `/v1/entries` lists only readable
//!   namespaces (a `?namespace=` the token cannot read is a 403). `/v1/stats` is aggregate numbers
//!   naming no namespace, so any read token may see it.
//! - Blobs are content-addressed: a blob PUT or `blobs/missing` needs `write` in at least one
//!   namespace; a blob GET/HEAD needs `read` and, unless the token reads every namespace (`*`),
//!   the blob must belong to an entry in a namespace the token reads (else 403).
//! - A role too low for the route, or a namespace outside the token's patterns: 403 `forbidden`.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use axum::extract::rejection::RawPathParamsRejection;
use axum::extract::{FromRequestParts, MatchedPath, RawPathParams, Request, State};
use axum::http::request::Parts;
use axum::http::{Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use layercache_shared::Namespace;
use sha2::{Digest as _, Sha256};

use crate::auth_gate::AuthGate;
use crate::error::ServerError;
use crate::routes::AppState;
use crate::store::meta::Metadata;
use crate::store::tokens::TokenRecord;

/// What a token may do; each role includes the ones below it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    /// Restore: GET/HEAD images, manifests, blobs; lookup, stats, entries.
    Read,
    /// Read + push: PUT images and blobs, manifest commits, `blobs/missing`.
    Write,
    /// Everything, including DELETE.
    Admin,
}

impl Role {
    /// The name used on the command line and in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Read => "read",
            Role::Write => "write",
            Role::Admin => "admin",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = ServerError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "read" => Ok(Role::Read),
            "write" => Ok(Role::Write),
            "admin" => Ok(Role::Admin),
            _ => Err(ServerError::InvalidPolicy {
                message: format!("role `{s}` is unknown: use `read`, `write` or `admin`"),
            }),
        }
    }
}

/// Which namespaces a token may touch: `*` (all), `acme/*` (every namespace below `acme`, e.g.
/// `acme/web` and `acme/web/main`, but not `acme` itself), or one exact namespace.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct NamespacePattern(String);

impl NamespacePattern {
    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether `ns` is covered.
    pub fn matches(&self, ns: &str) -> bool {
        if self.0 == "*" {
            return true;
        }
        match self.0.strip_suffix("/*") {
            Some(base) => ns
                .strip_prefix(base)
                .is_some_and(|rest| rest.starts_with('/') && rest.len() > 1),
            None => self.0 == ns,
        }
    }

    /// Whether this pattern covers every namespace.
    pub fn is_all(&self) -> bool {
        self.0 == "*"
    }
}

impl FromStr for NamespacePattern {
    type Err = ServerError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let base = s.strip_suffix("/*").unwrap_or(s);
        if s == "*" || base.parse::<Namespace>().is_ok() {
            Ok(NamespacePattern(s.to_string()))
        } else {
            Err(ServerError::InvalidPolicy {
                message: format!(
                    "namespace pattern `{s}` is invalid: use `*`, a namespace such as `acme/web`, \
                     or a namespace followed by `/*` such as `acme/*`"
                ),
            })
        }
    }
}

impl fmt::Display for NamespacePattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Who is making a request: put into the request extensions by [`authorize`], read by handlers
/// that filter by namespace (lookup, entries) through the [`FromRequestParts`] impl.
#[derive(Debug, Clone)]
pub enum Access {
    /// No live token exists: the server is open.
    Open,
    /// A valid token.
    Token(Arc<TokenRecord>),
}

impl Access {
    /// Whether this caller may act with `role` in namespace `ns`.
    pub fn allows(&self, role: Role, ns: &str) -> bool {
        match self {
            Access::Open => true,
            Access::Token(t) => t.role >= role && t.namespaces.iter().any(|p| p.matches(ns)),
        }
    }

    /// Whether this caller may read namespace `ns`.
    pub fn can_read(&self, ns: &Namespace) -> bool {
        self.allows(Role::Read, ns.as_str())
    }

    /// 403 unless this caller may act with `role` in `ns`.
    pub fn require(&self, role: Role, ns: &str) -> Result<(), ServerError> {
        if self.allows(role, ns) {
            return Ok(());
        }
        Err(self.forbidden(format!("{role} access to namespace `{ns}`")))
    }

    /// 403 unless the caller's role is at least `role` (in some namespace).
    fn require_role(&self, role: Role) -> Result<(), ServerError> {
        match self {
            Access::Token(t) if t.role < role || t.namespaces.is_empty() => {
                Err(self.forbidden(format!("the {role} role")))
            }
            _ => Ok(()),
        }
    }

    /// The token's id (who uploaded a blob), `None` on an open server.
    pub fn token_id(&self) -> Option<i64> {
        match self {
            Access::Open => None,
            Access::Token(t) => Some(t.id),
        }
    }

    /// Of `digests`, the stored blobs this caller may learn exist and name in a commit (see
    /// [`Metadata::visible_blobs`]); every stored one for a caller reading every namespace.
    pub fn visible_blobs(
        &self,
        db: &dyn Metadata,
        digests: &[layercache_shared::Digest],
    ) -> Result<std::collections::HashSet<layercache_shared::Digest>, ServerError> {
        if self.reads_all() {
            return Ok(db.blob_sizes(digests)?.into_keys().collect());
        }
        let stored: Vec<_> = db.blob_sizes(digests)?.into_keys().collect();
        Ok(db.visible_blobs(&stored, self.token_id(), &|ns| self.allows(Role::Read, ns))?)
    }

    /// 403 unless the caller has `role` in every namespace (`*`): for operator views that name
    /// every namespace (the dashboard overview, `/metrics`, the largest entries, unfiltered history
    /// and build lists). A token limited to `acme/*` asks for its namespace with `?namespace=`.
    pub fn require_all(&self, role: Role) -> Result<(), ServerError> {
        match self {
            Access::Token(t) if t.role < role || !self.reads_all() => Err(self.forbidden(format!(
                "{role} access to every namespace (this view names them all; with a token \
                 limited to some namespaces, add `?namespace=NS`)"
            ))),
            _ => Ok(()),
        }
    }

    /// [`Access::require`] for `ns` when a view is narrowed to it, else [`Access::require_all`].
    pub fn require_view(&self, role: Role, ns: Option<&Namespace>) -> Result<(), ServerError> {
        match ns {
            Some(ns) => self.require(role, ns.as_str()),
            None => self.require_all(role),
        }
    }

    /// Whether the caller reads every namespace.
    pub fn reads_all(&self) -> bool {
        match self {
            Access::Open => true,
            Access::Token(t) => t.namespaces.iter().any(NamespacePattern::is_all),
        }
    }

    fn forbidden(&self, what: String) -> ServerError {
        let who = match self {
            Access::Open => "the caller".to_string(),
            Access::Token(t) => {
                let pats: Vec<&str> = t.namespaces.iter().map(|p| p.as_str()).collect();
                format!(
                    "token {} ({}, namespaces {})",
                    t.name.clone().unwrap_or_else(|| format!("#{}", t.id)),
                    t.role,
                    pats.join(", ")
                )
            }
        };
        ServerError::Forbidden {
            reason: format!(
                "{who} lacks {what}: use a token with that role and namespace (see `layercache-server token create --help`)"
            ),
        }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Access {
    type Rejection = ServerError;
    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        parts.extensions.get::<Access>().cloned().ok_or_else(|| {
            ServerError::Internal("the auth middleware did not run for this route".into())
        })
    }
}

/// What a route needs, before the handler runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Need {
    /// Answers everyone (`/healthz`).
    Public,
    /// Any valid token (or an open server); for unknown routes, which answer 404/405.
    Authenticated,
    /// `role` in at least one namespace; handlers narrow further (lookup, entries, stats).
    Role(Role),
    /// `role` in namespace `ns` (from the URL).
    Namespace(Role, String),
    /// `read`, and the blob must belong to a readable namespace.
    BlobRead(String),
}

/// The access route `matched` (the route pattern, `None` for the fallback) with `method` needs;
/// `param` gives a path parameter's (percent-decoded) value.
pub fn need_of<'a>(
    method: &Method,
    matched: Option<&str>,
    param: impl Fn(&str) -> Option<&'a str>,
) -> Need {
    let Some(path) = matched else {
        return Need::Authenticated;
    };
    let ns = || param("ns").unwrap_or_default().to_string();
    let read = method == Method::GET || method == Method::HEAD;
    match path {
        "/healthz" => Need::Public,
        "/v1/images/{ns}/{key}" | "/v1/images/{ns}/{key}/manifest" => {
            if read {
                Need::Namespace(Role::Read, ns())
            } else if method == Method::PUT {
                Need::Namespace(Role::Write, ns())
            } else {
                Need::Namespace(Role::Admin, ns())
            }
        }
        "/v1/blobs" | "/v1/blobs/missing" if method == Method::POST => Need::Role(Role::Write),
        "/v1/blobs/{digest}" if read => {
            Need::BlobRead(param("digest").unwrap_or_default().to_string())
        }
        "/v1/blobs/{digest}" if method == Method::PUT => Need::Role(Role::Write),
        "/v1/lookup" if method == Method::POST => Need::Role(Role::Read),
        "/v1/stats" | "/v1/entries" | "/v1/tags" | "/v1/disk" if read => Need::Role(Role::Read),
        // The registry's version check: any valid token (it is how `docker login` tests one).
        "/v2" | "/v2/" => Need::Authenticated,
        "/v2/{*rest}" => registry_need(method, param("rest").unwrap_or_default()),
        "/v1/entries/{ns}/{key}" if read => Need::Namespace(Role::Read, ns()),
        // Runners report their builds; reading reports back (they name every namespace) is for
        // operators, as are the dashboard pages, `/metrics`, history and largest (the default below).
        "/v1/builds" if method == Method::POST => Need::Role(Role::Write),
        // A known route with a method it lacks: any caller may learn it is a 405.
        "/v1/blobs" | "/v1/blobs/missing" | "/v1/blobs/{digest}" | "/v1/lookup" | "/v1/stats"
        | "/v1/entries" | "/v1/tags" => Need::Authenticated,
        _ => Need::Role(Role::Admin),
    }
}

/// What a `/v2/...` request needs: read to pull, write to push (uploads, manifest PUTs, cancelling
/// an upload), admin to delete content, as on the v1 API. A mount's source repository is checked
/// by its handler. A path that names no endpoint needs only a valid token (it answers 404).
fn registry_need(method: &Method, rest: &str) -> Need {
    use crate::registry::path::{self, Resource, Target};
    let Ok(target) = path::parse(rest) else {
        return Need::Authenticated;
    };
    let (repo, resource) = match target {
        Target::Catalog => return Need::Role(Role::Read),
        Target::Repo(repo, resource) => (repo.to_string(), resource),
    };
    let role = match (method, &resource) {
        (&Method::GET | &Method::HEAD, _) => Role::Read,
        (
            &Method::DELETE,
            Resource::Manifest(_) | Resource::BadManifestRef(_) | Resource::Blob(_),
        ) => Role::Admin,
        _ => Role::Write,
    };
    Need::Namespace(role, repo)
}

/// The sha256 (hex) stored for a token.
pub fn hash_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// A new random token: `lc_` and 32 random bytes in hex.
pub fn generate_token() -> Result<String, ServerError> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| {
        ServerError::Internal(format!("the system random number generator failed: {e}"))
    })?;
    Ok(format!("lc_{}", hex::encode(bytes)))
}

/// Creates a token in `db` and returns it (the only time it is ever shown) with its record.
/// `name`, when given, must not be all digits (revoke takes ids too) and must be unused.
pub fn create_token(
    db: &dyn Metadata,
    role: Role,
    namespaces: &[NamespacePattern],
    name: Option<&str>,
) -> Result<(String, TokenRecord), ServerError> {
    if namespaces.is_empty() {
        return Err(ServerError::InvalidPolicy {
            message: "a token needs at least one --namespace pattern (`*` for all)".into(),
        });
    }
    if let Some(n) = name {
        if n.is_empty() || n.bytes().all(|b| b.is_ascii_digit()) {
            return Err(ServerError::InvalidPolicy {
                message: format!(
                    "token name `{n}` is not usable: give a name with a letter in it (all-digit \
                     arguments to `token revoke` are ids)"
                ),
            });
        }
        let taken = db
            .list_tokens()?
            .iter()
            .any(|t| t.revoked.is_none() && t.name.as_deref() == Some(n));
        if taken {
            return Err(ServerError::InvalidPolicy {
                message: format!(
                    "a live token is already named `{n}`: pick another name or revoke it first"
                ),
            });
        }
    }
    let token = generate_token()?;
    let rec = db.insert_token(&hash_token(&token), name, role, namespaces)?;
    Ok((token, rec))
}

/// The token in an `Authorization` value: `Bearer <token>`, or `Basic` credentials whose password
/// is the token (what `docker login HOST -u anything -p TOKEN` sends; the user name is ignored).
fn token_of(value: &str) -> Option<String> {
    use base64::Engine as _;
    let (scheme, rest) = value.trim().split_once(' ')?;
    let rest = rest.trim();
    let token = if scheme.eq_ignore_ascii_case("bearer") {
        rest.to_string()
    } else if scheme.eq_ignore_ascii_case("basic") {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(rest)
            .ok()?;
        let text = String::from_utf8(decoded).ok()?;
        text.split_once(':')?.1.to_string()
    } else {
        return None;
    };
    (!token.is_empty()).then_some(token)
}

/// The caller of a request: `Open` while the [`AuthGate`] is open, else the token in
/// `Authorization`.
fn authenticate(
    db: &dyn Metadata,
    gate: &AuthGate,
    authorization: Option<&str>,
) -> Result<Access, ServerError> {
    if gate.is_open(db)? {
        return Ok(Access::Open);
    }
    let unauthorized = |reason: &str| -> ServerError {
        let advice = match gate.refused(db) {
            Ok(Some(none_left)) => none_left,
            _ => "ask the server's admin for a token",
        };
        ServerError::Unauthorized {
            reason: format!(
                "{reason}: this server requires `Authorization: Bearer <token>` (the runner \
                 sends LAYERCACHE_TOKEN); {advice}"
            ),
        }
    };
    let Some(value) = authorization else {
        return Err(unauthorized("the request has no token"));
    };
    let token = token_of(value).ok_or_else(|| {
        unauthorized("the Authorization header is neither a bearer token nor Basic credentials")
    })?;
    let token = token.as_str();
    match db.use_token(&hash_token(token))? {
        Some(rec) => {
            gate.token_accepted();
            Ok(Access::Token(Arc::new(rec)))
        }
        None => Err(unauthorized("the token is unknown or revoked")),
    }
}

/// Authenticates and authorizes `need` against the store (blocking: runs SQLite queries).
fn check(
    db: &dyn Metadata,
    gate: &AuthGate,
    authorization: Option<&str>,
    need: &Need,
) -> Result<Access, ServerError> {
    if *need == Need::Public {
        return Ok(Access::Open);
    }
    let access = authenticate(db, gate, authorization)?;
    match need {
        Need::Public | Need::Authenticated => {}
        Need::Role(role) => access.require_role(*role)?,
        Need::Namespace(role, ns) => access.require(*role, ns)?,
        Need::BlobRead(digest) => {
            access.require_role(Role::Read)?;
            if !access.reads_all() {
                let readable = db
                    .blob_namespaces(digest)?
                    .iter()
                    .any(|ns| access.allows(Role::Read, ns));
                if !readable {
                    return Err(access.forbidden(format!(
                        "read access to blob {digest}: it is not part of an entry in a \
                         namespace the token may read"
                    )));
                }
            }
        }
    }
    Ok(access)
}

/// Middleware on every route: classifies the request ([`need_of`]), checks the token, and
/// passes the [`Access`] on to handlers; answers 401/403 itself.
pub async fn authorize(
    State(state): State<AppState>,
    params: Result<RawPathParams, RawPathParamsRejection>,
    mut req: Request,
    next: Next,
) -> Response {
    let matched = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_owned());
    let need = need_of(req.method(), matched.as_deref(), |name| {
        params
            .as_ref()
            .ok()
            .and_then(|p| p.iter().find(|(k, _)| *k == name).map(|(_, v)| v))
    });
    let authorization = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let result = if need == Need::Public {
        Ok(Access::Open)
    } else {
        let gate = Arc::clone(&state.auth);
        state
            .store
            .blocking(move |s| check(&s.db, &gate, authorization.as_deref(), &need))
            .await
    };
    match result {
        Ok(access) => {
            req.extensions_mut().insert(access);
            next.run(req).await
        }
        // Registry clients read the spec's error body and expect a Basic challenge.
        Err(e) if matched.as_deref().is_some_and(|m| m.starts_with("/v2")) => {
            crate::registry::error::OciError(e).into_response()
        }
        Err(e) => e.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pat(s: &str) -> NamespacePattern {
        s.parse().unwrap()
    }

    fn token(role: Role, pats: &[&str]) -> Access {
        Access::Token(Arc::new(TokenRecord {
            id: 1,
            name: Some("t".into()),
            role,
            namespaces: pats.iter().map(|p| pat(p)).collect(),
            created: 0,
            last_used: None,
            revoked: None,
        }))
    }

    #[test]
    fn patterns_match_subtrees_exact_names_and_all() {
        let p = pat("acme/*");
        assert!(p.matches("acme/x"));
        assert!(p.matches("acme/x/y"));
        assert!(!p.matches("acme"));
        assert!(!p.matches("acmex/y"));
        assert!(!p.matches("other/acme/x"));
        assert!(pat("*").matches("anything/at/all"));
        assert!(pat("acme/web").matches("acme/web"));
        assert!(!pat("acme/web").matches("acme/web/main"));
        assert!(pat("acme/web/*").matches("acme/web/pr-1"));
    }

    #[test]
    fn bad_patterns_and_roles_are_refused_with_advice() {
        for bad in ["", "acme/", "acme/**", "*/x", "a b", "acme/../x", "/*"] {
            let e = bad.parse::<NamespacePattern>().unwrap_err();
            assert!(e.to_string().contains("acme/*"), "{bad}: {e}");
        }
        let e = "owner".parse::<Role>().unwrap_err();
        assert!(e.to_string().contains("`read`, `write` or `admin`"));
        assert_eq!("admin".parse::<Role>().unwrap(), Role::Admin);
    }

    #[test]
    fn roles_include_the_ones_below_within_their_namespaces() {
        let w = token(Role::Write, &["acme/*"]);
        assert!(w.allows(Role::Read, "acme/web"));
        assert!(w.allows(Role::Write, "acme/web"));
        assert!(!w.allows(Role::Admin, "acme/web"));
        assert!(!w.allows(Role::Read, "other/web"));
        let r = token(Role::Read, &["acme/web/*"]);
        assert!(r.require(Role::Write, "acme/web/main").is_err());
        assert!(r.require_role(Role::Write).is_err());
        assert!(r.require_role(Role::Read).is_ok());
        assert!(Access::Open.allows(Role::Admin, "x"));
        let e = r.require(Role::Write, "acme/web/main").unwrap_err();
        assert_eq!(e.status_and_code().1, "forbidden");
        assert!(
            e.to_string()
                .contains("write access to namespace `acme/web/main`")
        );
    }

    #[test]
    fn every_route_is_classified() {
        let p = |name: &str| match name {
            "ns" => Some("acme/web"),
            "digest" => Some("sha256:ab"),
            _ => None,
        };
        let ns = |r| Need::Namespace(r, "acme/web".into());
        let cases = [
            (Method::GET, "/healthz", Need::Public),
            (Method::GET, "/v1/images/{ns}/{key}", ns(Role::Read)),
            (Method::HEAD, "/v1/images/{ns}/{key}", ns(Role::Read)),
            (Method::PUT, "/v1/images/{ns}/{key}", ns(Role::Write)),
            (Method::DELETE, "/v1/images/{ns}/{key}", ns(Role::Admin)),
            (
                Method::GET,
                "/v1/images/{ns}/{key}/manifest",
                ns(Role::Read),
            ),
            (
                Method::PUT,
                "/v1/images/{ns}/{key}/manifest",
                ns(Role::Write),
            ),
            (Method::POST, "/v1/blobs/missing", Need::Role(Role::Write)),
            (Method::POST, "/v1/blobs", Need::Role(Role::Write)),
            (Method::GET, "/v1/blobs", Need::Authenticated),
            (Method::PUT, "/v1/blobs/{digest}", Need::Role(Role::Write)),
            (
                Method::GET,
                "/v1/blobs/{digest}",
                Need::BlobRead("sha256:ab".into()),
            ),
            (Method::POST, "/v1/lookup", Need::Role(Role::Read)),
            (Method::GET, "/v1/stats", Need::Role(Role::Read)),
            (Method::GET, "/v1/entries", Need::Role(Role::Read)),
            (
                Method::POST,
                "/v1/some-new-admin-thing",
                Need::Role(Role::Admin),
            ),
        ];
        for (m, path, want) in cases {
            assert_eq!(need_of(&m, Some(path), p), want, "{m} {path}");
        }
        assert_eq!(need_of(&Method::GET, None, p), Need::Authenticated);
    }

    #[test]
    fn tokens_are_random_prefixed_and_hashed() {
        let a = generate_token().unwrap();
        let b = generate_token().unwrap();
        assert_ne!(a, b);
        assert!(a.starts_with("lc_") && a.len() == 3 + 64);
        assert_eq!(hash_token(&a).len(), 64);
        assert_ne!(hash_token(&a), a);
    }

    #[test]
    fn create_refuses_numeric_or_taken_names_and_empty_patterns() {
        let dir = tempfile::tempdir().unwrap();
        let db = crate::store::sqlite::Db::open(&dir.path().join("db")).unwrap();
        let all = [pat("*")];
        assert!(create_token(&db, Role::Read, &[], None).is_err());
        assert!(create_token(&db, Role::Read, &all, Some("42")).is_err());
        let (tok, rec) = create_token(&db, Role::Read, &all, Some("ci")).unwrap();
        assert_eq!(rec.name.as_deref(), Some("ci"));
        assert!(create_token(&db, Role::Read, &all, Some("ci")).is_err());
        let gate = AuthGate::at_start(true, 1);
        let access = authenticate(&db, &gate, Some(&format!("Bearer {tok}"))).unwrap();
        assert!(matches!(access, Access::Token(_)));
        let e = authenticate(&db, &gate, Some("Bearer lc_nope")).unwrap_err();
        assert_eq!(e.status_and_code().1, "unauthorized");
        let e = authenticate(&db, &gate, None).unwrap_err();
        assert_eq!(e.status_and_code().1, "unauthorized");
    }
}
