//! Device authentication shared by every adapter: a device key (HTTP's
//! `Device` scheme, MQTT's password, later DTLS-PSK) or a device already
//! identified by its client certificate must belong to an active device.
//!
//! The checks run over the [`Store`] port; adapters turn a [`Refusal`] into
//! their protocol's answer and audit it.

use chrono::{DateTime, Utc};

use crate::credential::{self, TokenKind};
use crate::domain::{Device, DeviceState};
use crate::ids::{DeviceId, DeviceKeyId};
use crate::store::{Store, StoreError};

/// Why device credentials were refused. `kind` names the credential
/// (`device_key`, `client_certificate`); `reason` is safe to log and audit:
/// it never contains the secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal {
    pub kind: &'static str,
    pub reason: &'static str,
}

#[derive(Debug, thiserror::Error)]
pub enum DeviceAuthError {
    #[error("{}: {}", .0.kind, .0.reason)]
    Refused(Refusal),
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn refused(kind: &'static str, reason: &'static str) -> DeviceAuthError {
    DeviceAuthError::Refused(Refusal { kind, reason })
}

/// Checks a device key token (`moat_dk_…`): well formed, known, the right
/// secret, neither revoked nor expired, and its device active. With
/// `device`, the key must also belong to that device (MQTT's user name).
pub async fn device_key(
    store: &dyn Store,
    token: &str,
    device: Option<DeviceId>,
    now: DateTime<Utc>,
) -> Result<(Device, DeviceKeyId), DeviceAuthError> {
    const KIND: &str = "device_key";
    let (id, secret) = credential::parse(TokenKind::DeviceKey, token)
        .ok_or(refused(KIND, "malformed device key"))?;
    let key = store
        .device_key(DeviceKeyId(id))
        .await?
        .ok_or(refused(KIND, "unknown device key"))?;
    if !credential::verify(&secret, &key.secret_hash) {
        return Err(refused(KIND, "wrong device key secret"));
    }
    if !key.is_usable(now) {
        return Err(refused(KIND, "device key revoked or expired"));
    }
    if device.is_some_and(|d| d != key.device_id) {
        return Err(refused(KIND, "the key belongs to another device"));
    }
    let device = active_device(store, key.device_id, KIND).await?;
    Ok((device, key.id))
}

/// The device `id`, which must exist and be active; `kind` names the
/// credential that identified it, for the refusal.
pub async fn active_device(
    store: &dyn Store,
    id: DeviceId,
    kind: &'static str,
) -> Result<Device, DeviceAuthError> {
    let device = store
        .device(id)
        .await?
        .ok_or(refused(kind, "device deleted"))?;
    if device.state != DeviceState::Active {
        return Err(refused(kind, "device is not active"));
    }
    Ok(device)
}
