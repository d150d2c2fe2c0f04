//! What `GET /v1/presence` answers: the users' presence records, read (not watched) from the
//! nodes' presence store (contract section 7). Invisible is shown as `offline`, without its
//! note; a record owned by a node instance central no longer lists (a node that died before
//! its watchers wrote the offline) is shown `offline` too, as watchers see it.

use serde::Serialize;
use signal_node::presence::store::{PresenceStore, Record};
use signal_proto::UserId;

use super::ServerApiError;
use crate::registry::NodeRecord;

/// One entry of `{"presence":[...]}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PresenceView {
    pub user: String,
    /// `online`, `away`, `busy` or `offline` (invisible users show as `offline`).
    pub state: &'static str,
    /// The user's note; `null` when none, or when shown offline.
    pub note: Option<String>,
    /// When the state began (ms since epoch); `null` for a user never seen (or whose offline
    /// record expired after `--presence-offline-ttl-secs`).
    pub since: Option<u64>,
}

/// The presence of `users` (in order), given the live node list.
pub async fn presence_of(
    store: &PresenceStore,
    nodes: &[NodeRecord],
    users: &[UserId],
) -> Result<Vec<PresenceView>, ServerApiError> {
    let records = store
        .read(users)
        .await
        .map_err(|e| ServerApiError::Unavailable(format!("{e}: retry later")))?;
    Ok(users
        .iter()
        .zip(records)
        .map(|(user, record)| view(user, record.as_ref(), nodes))
        .collect())
}

fn view(user: &UserId, record: Option<&Record>, nodes: &[NodeRecord]) -> PresenceView {
    let Some(r) = record else {
        return PresenceView {
            user: user.to_string(),
            state: "offline",
            note: None,
            since: None,
        };
    };
    let owner_live = !r.owner.is_none()
        && nodes
            .iter()
            .any(|n| n.info.id.as_str() == r.owner.node && n.info.instance == r.owner.instance);
    let state = match r.state.as_str() {
        "online" if owner_live => "online",
        "away" if owner_live => "away",
        "busy" if owner_live => "busy",
        _ => "offline",
    };
    PresenceView {
        user: user.to_string(),
        state,
        note: (state != "offline" && !r.note.is_empty()).then(|| r.note.clone()),
        since: Some(r.since),
    }
}
