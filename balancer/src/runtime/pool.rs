//! A pool: the backends one route sends to, and how it picks among them.

use std::sync::Arc;

use crate::select::{BackendSelection, SelectionContext};

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

    /// Picks a backend for a request, or `None` when the pool has none usable.
    pub fn select(&self, ctx: &SelectionContext<'_>) -> Option<&Arc<Backend>> {
        // Health and draining plug in here as the `usable` predicate.
        self.selection
            .select(ctx, &|_| true)
            .and_then(|i| self.backends.get(i))
    }
}
