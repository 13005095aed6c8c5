//! `POST /v1/lookup`: the best entry for a key: exact, then fallback namespaces, then the longest
//! shared instruction prefix.

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use layercache_shared::api::{LookupRequest, LookupResponse};

use super::json_body;
use crate::auth::{Access, Role};
use crate::error::ServerError;
use crate::routes::AppState;
use crate::store::Store;

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
    // One read transaction, retried if the found entry is replaced before its manifest is read.
    let found = store
        .db
        .find_match(&req.namespaces, &req.key, &req.prefixes)?;
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
