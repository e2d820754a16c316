//! A task's stored heads as apps see them: the store's records decoded
//! once into types (kind, validation metrics, privacy), so no caller parses
//! the stored text again.

use crate::error::{Error, Result};
use crate::evaluation::Metrics;
use crate::heads::HeadKind;
use crate::store::HeadInfo;

/// One stored head of a task.
#[derive(Debug, Clone, PartialEq)]
pub struct HeadVersion {
    pub version: u32,
    pub kind: HeadKind,
    /// The backbone whose features it reads.
    pub fingerprint: String,
    /// What its training measured on examples it was not trained on.
    pub validation: Option<Metrics>,
    /// Trained on data since forgotten: erased, and never active again.
    pub stale: bool,
    pub active: bool,
    pub created_at_ms: i64,
    /// For a head trained with differential privacy, the (ε, δ) its task
    /// had spent when it was trained.
    pub privacy: Option<PrivacyBound>,
    /// Adopted from federated rounds rather than trained on the device.
    pub shared: bool,
    /// Size of its stored weights (with adapted layers, when it has them).
    pub weight_bytes: u64,
}

/// An (ε, δ) differential-privacy guarantee.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PrivacyBound {
    pub epsilon: f64,
    pub delta: f64,
}

impl TryFrom<HeadInfo> for HeadVersion {
    type Error = Error;

    fn try_from(info: HeadInfo) -> Result<Self> {
        let kind = HeadKind::from_name(&info.kind)
            .map_err(|_| Error::DatabaseUnreadable(format!("head {} has an unknown kind", info.version)))?;
        Ok(Self {
            version: info.version,
            kind,
            validation: Metrics::from_stored_json(&info.metrics),
            stale: info.stale,
            active: info.active,
            created_at_ms: info.created_at,
            privacy: info.privacy.map(|(epsilon, delta)| PrivacyBound { epsilon, delta }),
            shared: info.shared,
            weight_bytes: info.weight_bytes,
            fingerprint: info.fingerprint,
        })
    }
}
