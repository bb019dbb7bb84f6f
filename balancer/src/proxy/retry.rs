//! After a failed attempt: what the backend learns from it, and whether
//! the request is tried again on another backend. Both are pure functions
//! of the failure, so they are tested without sockets.
//!
//! | the attempt                                   | retried                 | budget     |
//! |-----------------------------------------------|-------------------------|------------|
//! | nothing reached the backend, at once (refused,| yes, any method         | free       |
//! | unreachable, broke before the head was sent)  |                         |            |
//! | nothing reached it: the connect timed out     | yes, any method         | one retry  |
//! | may have reached it (broke after sending,     | idempotent methods only | one retry  |
//! | bad response head)                            |                         |            |
//! | response timeout, client's own failure        | never                   |            |
//!
//! Always only with a replayable body (none, or buffered: known length up
//! to `retry.max_body`) and at most `retry.attempts` times per request.
//! A retry after an immediate failure that nothing reached costs the
//! backends nothing, so the budget (which keeps a sick pool from being
//! hammered) does not count it. A connect that timed out reached nothing
//! either, but it says the pool may be overloaded (a full accept queue
//! drops connection attempts): repeating it there is more of the same
//! load, so the budget counts it.

use http::StatusCode;

use super::ProxyError;
use crate::upstream::ejection::Event;
use crate::upstream::{Reached, UpstreamError};

/// Whether to try again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Nothing reached the backend: elsewhere, without charging the budget.
    RetryFree,
    /// It may have reached the backend and repeating it is safe:
    /// elsewhere, if the retry budget has a retry.
    RetryFromBudget,
    /// The client gets the error.
    GiveUp,
}

/// What the request is, for [`decide`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    /// The method may be sent twice (RFC 9110 9.2.2).
    pub idempotent: bool,
    /// The body can be sent again (empty or buffered).
    pub replayable: bool,
    /// Retries made so far for this request.
    pub retries: u32,
    /// `retry.attempts`: retries allowed per request.
    pub allowed: u32,
}

/// See the module doc.
pub fn decide(error: &ProxyError, req: Request) -> Decision {
    if !req.replayable || req.retries >= req.allowed {
        return Decision::GiveUp;
    }
    match (error, error.reached()) {
        // The backend has the request and is working on it, or was.
        (ProxyError::ResponseTimeout(_), _) => Decision::GiveUp,
        (ProxyError::Upstream(UpstreamError::ConnectTimeout(_)), _) => Decision::RetryFromBudget,
        (_, Some(Reached::No)) => Decision::RetryFree,
        (_, Some(Reached::Maybe)) if req.idempotent => Decision::RetryFromBudget,
        _ => Decision::GiveUp,
    }
}

/// What an attempt tells the backend's ejection state machine; `None` when
/// the failure was not the backend's (the client's body, the client's
/// timing: the caller has turned those into `ClientBody` and
/// `ClientTimeout` already).
pub fn event(outcome: Result<StatusCode, &ProxyError>, on_5xx: bool) -> Option<Event> {
    match outcome {
        Ok(status) if on_5xx && status.is_server_error() => Some(Event::Failure),
        Ok(_) => Some(Event::Success),
        Err(ProxyError::Upstream(e)) if e.is_refused() => Some(Event::Refused),
        Err(ProxyError::Upstream(_) | ProxyError::ResponseTimeout(_)) => Some(Event::Failure),
        Err(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use proptest::prelude::*;

    use super::*;

    fn refused() -> ProxyError {
        ProxyError::Upstream(UpstreamError::Connect {
            addr: "127.0.0.1:1".parse().unwrap(),
            source: std::io::ErrorKind::ConnectionRefused.into(),
        })
    }

    fn errors() -> Vec<ProxyError> {
        vec![
            refused(),
            ProxyError::Upstream(UpstreamError::ConnectTimeout(Duration::from_secs(1))),
            ProxyError::Upstream(UpstreamError::Write {
                head_sent: false,
                source: std::io::ErrorKind::BrokenPipe.into(),
            }),
            ProxyError::Upstream(UpstreamError::Write {
                head_sent: true,
                source: std::io::ErrorKind::BrokenPipe.into(),
            }),
            ProxyError::Upstream(UpstreamError::Closed("reset".into())),
            ProxyError::Upstream(UpstreamError::Protocol("bad".into())),
            ProxyError::Upstream(UpstreamError::Upload("client".into())),
            ProxyError::ResponseTimeout(Duration::from_secs(1)),
            ProxyError::NoBackend { pool: "p".into() },
            ProxyError::ClientBody("gone".into()),
            ProxyError::ClientTimeout(Duration::from_secs(1)),
            ProxyError::NoRoute,
        ]
    }

    #[test]
    fn the_table_of_the_module_doc() {
        let get = Request {
            idempotent: true,
            replayable: true,
            retries: 0,
            allowed: 2,
        };
        let post = Request {
            idempotent: false,
            ..get
        };
        let d: Vec<(Decision, Decision)> = errors()
            .iter()
            .map(|e| (decide(e, get), decide(e, post)))
            .collect();
        use Decision::{GiveUp, RetryFree, RetryFromBudget};
        assert_eq!(
            d,
            vec![
                (RetryFree, RetryFree),             // refused
                (RetryFromBudget, RetryFromBudget), // connect timeout
                (RetryFree, RetryFree),             // head not written
                (RetryFromBudget, GiveUp),          // head written
                (RetryFromBudget, GiveUp),          // closed before the response
                (RetryFromBudget, GiveUp),          // bad response head
                (RetryFromBudget, GiveUp),          // upload failed
                (GiveUp, GiveUp),                   // response timeout
                (GiveUp, GiveUp),                   // no backend
                (GiveUp, GiveUp),                   // client body
                (GiveUp, GiveUp),                   // client timeout
                (GiveUp, GiveUp),                   // no route
            ]
        );
    }

    #[test]
    fn what_the_backend_learns() {
        assert_eq!(event(Ok(StatusCode::OK), true), Some(Event::Success));
        assert_eq!(
            event(Ok(StatusCode::BAD_GATEWAY), false),
            Some(Event::Success)
        );
        assert_eq!(
            event(Ok(StatusCode::BAD_GATEWAY), true),
            Some(Event::Failure)
        );
        assert_eq!(event(Err(&refused()), false), Some(Event::Refused));
        let closed = ProxyError::Upstream(UpstreamError::Closed("x".into()));
        assert_eq!(event(Err(&closed), false), Some(Event::Failure));
        assert_eq!(event(Err(&ProxyError::ClientBody("x".into())), false), None);
        let timeout = ProxyError::ClientTimeout(Duration::from_secs(1));
        assert_eq!(event(Err(&timeout), false), None);
        let upload = ProxyError::Upstream(UpstreamError::Upload("backend went away".into()));
        assert_eq!(event(Err(&upload), false), Some(Event::Failure));
    }

    proptest! {
        /// Whatever the failure and the request: nothing is retried past
        /// `attempts` or with a body that cannot be replayed; a request
        /// that may have reached a backend is repeated only when it is
        /// idempotent, and then only from the budget; a timed-out connect
        /// is never free.
        #[test]
        fn never_unsafe_never_unbounded(
            which in 0usize..12,
            idempotent in any::<bool>(),
            replayable in any::<bool>(),
            retries in 0u32..5,
            allowed in 0u32..5,
        ) {
            let e = &errors()[which];
            let d = decide(e, Request { idempotent, replayable, retries, allowed });
            if d != Decision::GiveUp {
                prop_assert!(replayable && retries < allowed);
            }
            let timed_out = matches!(e, ProxyError::Upstream(UpstreamError::ConnectTimeout(_)));
            match e.reached() {
                Some(Reached::Maybe) => prop_assert!(d != Decision::RetryFree),
                Some(Reached::No) if timed_out => prop_assert!(d != Decision::RetryFree),
                Some(Reached::No) => prop_assert!(d != Decision::RetryFromBudget),
                None => prop_assert_eq!(d, Decision::GiveUp),
            }
            if d == Decision::RetryFromBudget && !timed_out {
                prop_assert!(idempotent);
            }
        }
    }
}
