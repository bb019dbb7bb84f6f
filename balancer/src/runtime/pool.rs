//! A pool: the backends one route sends to, and how it picks among them.

use std::sync::Arc;

use http::HeaderValue;

use crate::select::{BackendSelection, Members, SelectionContext};

use super::Backend;

#[derive(Debug)]
pub struct Pool {
    pub name: Arc<str>,
    pub backends: Vec<Arc<Backend>>,
    /// Weight of each member, parallel to `backends`.
    pub weights: Vec<u32>,
    selection: Box<dyn BackendSelection>,
}

impl Pool {
    pub fn new(
        name: &str,
        backends: Vec<Arc<Backend>>,
        weights: Vec<u32>,
        selection: Box<dyn BackendSelection>,
    ) -> Self {
        Self {
            name: name.into(),
            backends,
            weights,
            selection,
        }
    }

    /// Picks a backend for a request, or `None` when the pool has none
    /// usable; with it, the `Set-Cookie` value to send when the client's
    /// sticky cookie must be (re)issued.
    pub fn select(
        &self,
        ctx: &SelectionContext<'_>,
    ) -> Option<(&Arc<Backend>, Option<&HeaderValue>)> {
        let pick = self.selection.select(ctx, &LiveMembers(&self.backends))?;
        let backend = self.backends.get(pick.index)?;
        let cookie = pick
            .renew_sticky
            .then(|| self.selection.set_cookie(pick.index))
            .flatten();
        Some((backend, cookie))
    }
}

/// The pool's backends as policies see them.
struct LiveMembers<'a>(&'a [Arc<Backend>]);

impl Members for LiveMembers<'_> {
    fn len(&self) -> usize {
        self.0.len()
    }

    fn usable(&self, i: usize) -> bool {
        // Health checkers write this; draining will join it.
        self.0.get(i).is_some_and(|b| b.is_up())
    }

    fn load(&self, i: usize) -> usize {
        self.0.get(i).map_or(0, |b| b.open_connections())
    }
}
