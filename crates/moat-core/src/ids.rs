//! Typed identifiers. Every id is a UUID; new ones are version 7 so that they
//! sort by creation time, which keyset pagination relies on.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub Uuid);

        impl $name {
            /// A fresh, time-ordered id.
            pub fn new() -> Self {
                Self(Uuid::now_v7())
            }
            pub fn as_uuid(&self) -> Uuid {
                self.0
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self::new()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }

        impl FromStr for $name {
            type Err = uuid::Error;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Uuid::parse_str(s).map(Self)
            }
        }

        impl From<Uuid> for $name {
            fn from(u: Uuid) -> Self {
                Self(u)
            }
        }

        impl utoipa::PartialSchema for $name {
            fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
                use utoipa::openapi::{schema::Type, KnownFormat, ObjectBuilder, SchemaFormat};
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .format(Some(SchemaFormat::KnownFormat(KnownFormat::Uuid)))
                    .into()
            }
        }
        impl utoipa::ToSchema for $name {}
    };
}

id_type!(/// A tenant: the isolation boundary.
    TenantId);
id_type!(/// A user of a tenant.
    UserId);
id_type!(/// A device.
    DeviceId);
id_type!(/// A channel (message stream).
    ChannelId);
id_type!(/// An API key (the secret is never stored).
    ApiKeyId);
id_type!(/// A device key (the secret is never stored).
    DeviceKeyId);
id_type!(/// A refresh token (the secret is never stored).
    RefreshTokenId);
id_type!(/// A device certificate Moat knows (issued, imported or registered).
    CertificateId);
id_type!(/// A certificate authority of a tenant.
    AuthorityId);
id_type!(/// A one-time claim code.
    ClaimCodeId);
id_type!(/// A message, time-ordered (UUIDv7).
    MessageId);
