//! What `GET /v1/presence` answers for one user. Until the presence store (contract section 7)
//! is on this branch, presence is read from the directory: `online` when the user has a
//! session on a live node, else `offline`; `note` and `since` are `null`. The integrator
//! switches [`presence_of`] to the presence store; nothing else changes.

use serde::Serialize;
use signal_node::Directory;
use signal_proto::UserId;

use super::{live_location, ServerApiError};
use crate::registry::NodeRecord;

/// One entry of `{"presence":[...]}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PresenceView {
    pub user: String,
    /// `online`, `away`, `busy` or `offline` (invisible users show as `offline`).
    pub state: &'static str,
    pub note: Option<String>,
    /// When the state was set (ms since epoch); `null` when not known (directory-based).
    pub since: Option<u64>,
}

/// The presence of `user`, given the live node list.
pub async fn presence_of(
    directory: &Directory,
    nodes: &[NodeRecord],
    user: &UserId,
) -> Result<PresenceView, ServerApiError> {
    let online = live_location(directory, nodes, user).await?.is_some();
    Ok(PresenceView {
        user: user.to_string(),
        state: if online { "online" } else { "offline" },
        note: None,
        since: None,
    })
}
