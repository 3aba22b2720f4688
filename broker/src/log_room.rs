//! Reserving log space before a proposal. Once openraft holds an entry the log store must
//! write it, and a full disk there is a storage error that stops the group until the broker
//! restarts; reserved first, a full disk is a clean `NO_SPACE` for the proposer and the next
//! proposal tries again (retention or an operator may have freed space meanwhile).

use std::sync::Arc;

use crate::error::BrokerError;
use crate::raft::log_store::SharedLog;

/// Makes sure the next `bytes` of appends to `log` cannot find the disk full.
pub async fn reserve(log: &SharedLog, bytes: u64) -> Result<(), BrokerError> {
    let poisoned = || BrokerError::Internal("log lock poisoned".into());
    // Almost every call fits in the space already reserved: no I/O, no hand-off.
    if log.read().map_err(|_| poisoned())?.has_room(bytes) {
        return Ok(());
    }
    let log = Arc::clone(log);
    crate::blocking::run_in_place(move || {
        log.write()
            .map_err(|_| poisoned())?
            .make_room(bytes)
            .map_err(BrokerError::from)
    })
    .await
    .map_err(|e| BrokerError::Internal(e.to_string()))?
}
