//! Access decisions that need the store: the channel a principal asks to
//! publish to or read, with the decision of [`authz::authorize_messages`],
//! and the principal of an authenticated device. Adapters (MQTT, CoAP) call
//! these and turn the outcome into their protocol's answer.

use crate::authz::{self, Decision, MessageAccess, Principal, Subject};
use crate::domain::{Channel, Device};
use crate::ids::ChannelId;
use crate::store::{Store, StoreError};

/// The channel `id` and whether `principal` may use it for `access`:
/// `Ok((Some(channel), Decision::Allow))` only when allowed. A missing
/// channel, or one in another tenant, is `Decision::NotFound`.
pub async fn channel_access(
    store: &dyn Store,
    principal: &Principal,
    id: ChannelId,
    access: MessageAccess,
) -> Result<(Option<Channel>, Decision), StoreError> {
    let Some(channel) = store.channel(id).await? else {
        return Ok((None, Decision::NotFound));
    };
    let Some(tenant) = store.tenant(channel.tenant_id).await? else {
        return Ok((None, Decision::NotFound));
    };
    let connection = match principal.subject {
        Subject::Device(device) => store.connection(id, device).await?,
        _ => None,
    };
    let decision =
        authz::authorize_messages(principal, access, &tenant.path, id, connection.as_ref());
    Ok((Some(channel), decision))
}

/// The principal of an authenticated (active) device; `None` when its
/// tenant is gone.
pub async fn device_principal(
    store: &dyn Store,
    device: &Device,
) -> Result<Option<Principal>, StoreError> {
    Ok(store.tenant(device.tenant_id).await?.map(|t| Principal {
        subject: Subject::Device(device.id),
        tenant: t.path,
        role: None,
    }))
}
