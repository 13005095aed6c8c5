//! Typed query strings: each handler names the parameters it takes as a serde struct, read by
//! axum's `Query` extractor (serde_urlencoded: percent-decoding, `+` as space, unknown parameters
//! ignored). A query that does not fit its struct is a `400 bad_request` naming the reason, through
//! [`ApiQuery`], before the handler runs.
//!
//! Values are validated while deserialised: a namespace is a [`Namespace`], a number a `u64`. An
//! empty value (`?namespace=`, what the dashboard's "all" option sends) means the parameter is
//! absent. Ranges that differ per endpoint (`limit`) are checked by the handler.

use std::fmt::Display;
use std::str::FromStr;

use axum::extract::{FromRequestParts, Query};
use axum::http::request::Parts;
use layercache_shared::Namespace;
use serde::de::{DeserializeOwned, Error as _};
use serde::{Deserialize, Deserializer};

use crate::error::ServerError;
use crate::store::sqlite::Cursor;

/// axum's `Query<T>` whose rejection is our JSON `400 bad_request`.
#[derive(Debug, Clone)]
pub struct ApiQuery<T>(pub T);

impl<S, T> FromRequestParts<S> for ApiQuery<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ServerError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ServerError> {
        match Query::<T>::from_request_parts(parts, state).await {
            Ok(Query(v)) => Ok(ApiQuery(v)),
            Err(e) => Err(ServerError::bad_request(e.body_text())),
        }
    }
}

/// `Some(value parsed with FromStr)`, or `None` when the parameter is absent or empty. The error
/// names the parameter's value, which serde_urlencoded does not.
fn blank_as_none<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: FromStr,
    T::Err: Display,
{
    match Option::<String>::deserialize(d)? {
        None => Ok(None),
        Some(s) if s.is_empty() => Ok(None),
        Some(s) => s
            .parse()
            .map(Some)
            .map_err(|e| D::Error::custom(format!("`{s}`: {e}"))),
    }
}

/// `?namespace=NS`: one namespace, or every namespace the caller reads.
#[derive(Debug, Default, Deserialize)]
pub struct NamespaceQuery {
    #[serde(default, deserialize_with = "blank_as_none")]
    pub namespace: Option<Namespace>,
}

/// `?namespace=NS&limit=N`: the newest or largest `limit` of a list (builds, largest).
#[derive(Debug, Default, Deserialize)]
pub struct ListQuery {
    #[serde(default, deserialize_with = "blank_as_none")]
    pub namespace: Option<Namespace>,
    #[serde(default, deserialize_with = "blank_as_none")]
    pub limit: Option<u64>,
}

/// `?namespace=NS&limit=N&cursor=C`: one page of a listing sorted by name (entries, tags).
#[derive(Debug, Default, Deserialize)]
pub struct PageQuery {
    #[serde(default, deserialize_with = "blank_as_none")]
    pub namespace: Option<Namespace>,
    #[serde(default, deserialize_with = "blank_as_none")]
    pub limit: Option<u64>,
    /// The `next_cursor` of the previous page, unchanged.
    #[serde(default, deserialize_with = "blank_as_none")]
    pub cursor: Option<PageCursor>,
}

/// `?window=1h|24h&namespace=NS`: the activity history and the dashboard.
#[derive(Debug, Default, Deserialize)]
pub struct HistoryQuery {
    #[serde(default, deserialize_with = "blank_as_none")]
    pub namespace: Option<Namespace>,
    /// A name of [`crate::store::sqlite::HISTORY_WINDOWS`]; checked by the handler.
    #[serde(default, deserialize_with = "blank_as_none")]
    pub window: Option<String>,
}

/// `?skip=D1,D2`: layers the client has (image GET).
#[derive(Debug, Default, Deserialize)]
pub struct SkipQuery {
    /// Comma-separated digests (see [`super::digest_list`]).
    #[serde(default)]
    pub skip: Option<String>,
}

/// A listing cursor as it travels in a query string.
#[derive(Debug, Clone)]
pub struct PageCursor(pub Cursor);

impl FromStr for PageCursor {
    type Err = &'static str;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Cursor::decode(s).map(PageCursor).ok_or(
            "not a cursor this server returned: pass `next_cursor` of the previous page unchanged",
        )
    }
}

impl PageQuery {
    /// `limit`, or `default` when absent; 400 unless it is 1..=`max`.
    pub fn limit(&self, default: u64, max: u64) -> Result<u64, ServerError> {
        limit_in(self.limit, default, max)
    }
}

impl ListQuery {
    /// `limit`, or `default` when absent; 400 unless it is 1..=`max`.
    pub fn limit(&self, default: u64, max: u64) -> Result<u64, ServerError> {
        limit_in(self.limit, default, max)
    }
}

fn limit_in(limit: Option<u64>, default: u64, max: u64) -> Result<u64, ServerError> {
    match limit {
        None => Ok(default),
        Some(n) if (1..=max).contains(&n) => Ok(n),
        Some(n) => Err(ServerError::bad_request(format!(
            "`limit={n}` is out of range: ask for 1 to {max}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse<T: DeserializeOwned>(q: &str) -> Result<T, String> {
        serde_urlencoded::from_str(q).map_err(|e| e.to_string())
    }

    #[test]
    fn values_are_decoded_and_typed() {
        let q: PageQuery = parse("namespace=acme%2Fweb&limit=5&other=1").unwrap();
        assert_eq!(q.namespace.unwrap().as_str(), "acme/web");
        assert_eq!(q.limit, Some(5));
        let q: SkipQuery = parse("skip=sha256%3Aab,sha256%3Acd").unwrap();
        assert_eq!(q.skip.as_deref(), Some("sha256:ab,sha256:cd"));
    }

    #[test]
    fn empty_values_mean_absent() {
        let q: HistoryQuery = parse("namespace=&window=").unwrap();
        assert!(q.namespace.is_none() && q.window.is_none());
    }

    #[test]
    fn invalid_values_are_refused_with_the_value() {
        let e = parse::<NamespaceQuery>("namespace=..%2F").unwrap_err();
        assert!(e.contains("`../`"), "{e}");
        let e = parse::<ListQuery>("limit=ten").unwrap_err();
        assert!(e.contains("`ten`"), "{e}");
        let e = parse::<PageQuery>("cursor=zz").unwrap_err();
        assert!(e.contains("next_cursor"), "{e}");
        let q: ListQuery = parse("limit=0").unwrap();
        assert!(q.limit(10, 500).is_err());
        assert_eq!(q.limit, Some(0));
    }
}
