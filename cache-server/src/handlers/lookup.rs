//! `POST /v1/lookup`: the best entry for a key: exact, then fallback namespaces, then the longest
//! shared instruction prefix.

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use layercache_shared::api::{LookupRequest, LookupResponse, MatchKind};

use super::json_body;
use crate::auth::{Access, Role};
use crate::error::ServerError;
use crate::routes::AppState;
use crate::store::Store;
use crate::store::sqlite::retry_replaced;

/// `POST /v1/lookup`; a miss is a 404 `not_found` and counts in `misses`.
/// Every namespace asked must be readable by the caller (403 otherwise, see [`crate::auth`]).
pub async fn lookup(
    State(state): State<AppState>,
    access: Access,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<LookupResponse>, ServerError> {
    let (req, _) = json_body::<LookupRequest>(body, "lookup request")?;
    if req.namespaces.is_empty() {
        return Err(ServerError::bad_request(
            "the lookup request names no namespace: list at least one",
        ));
    }
    for ns in &req.namespaces {
        access.require(Role::Read, ns.as_str())?;
    }
    let resp = state
        .store
        .blocking(move |s| lookup_blocking(s, &req))
        .await?;
    Ok(Json(resp))
}

fn lookup_blocking(store: &Store, req: &LookupRequest) -> Result<LookupResponse, ServerError> {
    // The found entry may be replaced before its manifest is read: then look again.
    let found = retry_replaced(|| {
        let mut found = None;
        for (i, ns) in req.namespaces.iter().enumerate() {
            if let Some(id) = store.db.find_entry(ns, &req.key)? {
                let kind = if i == 0 {
                    MatchKind::Exact
                } else {
                    MatchKind::Fallback
                };
                found = Some((id, kind, None));
                break;
            }
        }
        if found.is_none()
            && let Some((id, depth)) = store.db.find_prefix(&req.namespaces, &req.prefixes)?
        {
            found = Some((id, MatchKind::Prefix, Some(depth)));
        }
        found
            .map(|(id, kind, depth)| Ok((id, kind, depth, store.db.manifest(id)?)))
            .transpose()
    })?;
    let Some((id, matched, shared_instructions, manifest)) = found else {
        store.db.record_miss(&req.namespaces[0])?;
        return Err(ServerError::not_found(format!(
            "an entry for key `{}` or a shared instruction prefix in the namespaces asked",
            req.key
        )));
    };
    store.db.record_hit(id, Some(matched))?;
    Ok(LookupResponse {
        matched,
        shared_instructions,
        manifest,
    })
}
