//! Factory provisioning: a batch of devices imported at once, each with a
//! certificate the factory had signed by the tenant's own CA, or a CSR for
//! Moat to sign, or nothing (keys come later).
//!
//! A batch is all or nothing: every row is checked first, and one bad row
//! means nothing is stored and the answer lists every bad row. Re-running a
//! batch is safe: rows whose device already exists as described are
//! `unchanged` (a CSR row gets back the certificate issued the first time).
//! A device is recognized by its name, unique in its tenant, which is what a
//! factory has: a serial number.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use chrono::Utc;
use moat_core::audit::{Outcome, now_millis};
use moat_core::authz::{Action, Resource, ResourceKind};
use moat_core::pki::{Certificate, CertificateOrigin};
use moat_core::store::Change;
use moat_core::validate::{Checker, FieldError};
use moat_core::{AuthorityId, CertificateId, Device, DeviceId, DeviceState, TenantId};
use moat_pki::device::check_csr;
use moat_pki::inspect::CertInfo;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::certificates::{NewCertificate, mint};
use super::{TAG_DEVICES, empty_object};
use crate::auth::Caller;
use crate::extract::{Json, Query};
use crate::problem::{ApiError, Problem};
use crate::state::AppState;

/// At most this many rows in one request; larger files go in batches.
pub const MAX_IMPORT_ROWS: usize = 1000;

/// One device to import.
#[derive(Deserialize, ToSchema, Default, Debug)]
#[serde(deny_unknown_fields)]
pub struct ImportRow {
    /// Unique in the tenant: how a re-run recognizes the device.
    pub name: String,
    /// The device's id, when the factory fixed it [default: a new one].
    pub id: Option<DeviceId>,
    #[serde(default)]
    pub tags: Vec<String>,
    pub metadata: Option<serde_json::Value>,
    /// A PEM certificate signed by one of the tenant's CAs (any
    /// intermediates after it).
    pub certificate: Option<String>,
    /// A PEM CSR for Moat to sign with the tenant's CA.
    pub csr: Option<String>,
}

/// A batch of devices (`application/json`); `text/csv` works too, with a
/// header row naming the columns `name`, `id`, `tags` (separated by `;`),
/// `metadata` (JSON), `certificate` and `csr`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ImportBatch {
    pub devices: Vec<ImportRow>,
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ImportParams {
    /// Check every row and report, store nothing.
    pub dry_run: Option<bool>,
    /// Defaults to the caller's own tenant.
    pub tenant_id: Option<TenantId>,
}

/// What happened to a row (or would, in a dry run).
#[derive(Serialize, ToSchema, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ImportStatus {
    Created,
    /// An existing device got the row's certificate.
    Updated,
    Unchanged,
    WouldCreate,
    WouldUpdate,
}

#[derive(Serialize, ToSchema)]
pub struct ImportResult {
    /// 1-based, in the request.
    pub row: usize,
    pub name: String,
    pub device_id: DeviceId,
    pub status: ImportStatus,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub certificate_id: Option<CertificateId>,
    /// For CSR rows: the certificate to install on the device.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub certificate_pem: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct ImportReport {
    pub dry_run: bool,
    pub total: usize,
    pub created: usize,
    pub updated: usize,
    pub unchanged: usize,
    /// Certificates stored by this request: signed from CSRs or imported.
    pub certificates_issued: usize,
    pub results: Vec<ImportResult>,
}

/// Imports a batch of factory-provisioned devices, all or nothing.
#[utoipa::path(post, path = "/devices/import", tag = TAG_DEVICES, params(ImportParams),
    request_body(content(
        (ImportBatch = "application/json"),
        (String = "text/csv"),
    )),
    responses((status = 200, body = ImportReport), (status = 403, body = Problem), (status = 404, body = Problem),
        (status = 409, body = Problem), (status = 415, body = Problem), (status = 422, body = Problem)))]
pub async fn import(
    State(s): State<Arc<AppState>>,
    caller: Caller,
    Query(params): Query<ImportParams>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Json<ImportReport>, ApiError> {
    let tenant_id = params.tenant_id.unwrap_or(caller.principal.tenant_id());
    let path = s.tenant_path(tenant_id).await?;
    caller
        .authorize(
            &s,
            Action::Create,
            Resource::new(ResourceKind::Device, &path),
            "device",
            "device.import",
        )
        .await?;
    let rows = parse(&headers, &body)?;
    if rows
        .iter()
        .any(|r| r.certificate.is_some() || r.csr.is_some())
    {
        caller
            .authorize(
                &s,
                Action::Create,
                Resource::new(ResourceKind::Certificate, &path),
                "certificate",
                "device.import",
            )
            .await?;
    }
    let dry_run = params.dry_run.unwrap_or(false);
    let plan = plan(&s, tenant_id, rows).await?;
    let report = if dry_run {
        plan.report(true)
    } else {
        plan.apply(&s, &caller, tenant_id).await?
    };
    metrics::counter!("moat_device_import_rows_total", "outcome" => if dry_run { "checked" } else { "imported" })
        .increment(report.total as u64);
    Ok(Json(report))
}

/// The rows of a JSON or CSV body.
fn parse(headers: &HeaderMap, body: &[u8]) -> Result<Vec<ImportRow>, ApiError> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json");
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    let rows = match essence.as_str() {
        "application/json" => {
            serde_json::from_slice::<ImportBatch>(body)
                .map_err(|e| {
                    ApiError::new(
                        StatusCode::UNPROCESSABLE_ENTITY,
                        format!("invalid body: {e}"),
                    )
                })?
                .devices
        }
        "text/csv" => parse_csv(body)?,
        _ => {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "send application/json or text/csv",
            ));
        }
    };
    if rows.is_empty() {
        return Err(ApiError::unprocessable("devices", "no rows to import"));
    }
    if rows.len() > MAX_IMPORT_ROWS {
        return Err(ApiError::unprocessable(
            "devices",
            format!("at most {MAX_IMPORT_ROWS} rows per request; send the rest in further batches"),
        ));
    }
    Ok(rows)
}

const CSV_COLUMNS: [&str; 6] = ["name", "id", "tags", "metadata", "certificate", "csr"];

fn parse_csv(body: &[u8]) -> Result<Vec<ImportRow>, ApiError> {
    let mut reader = csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .from_reader(body);
    let header = reader
        .headers()
        .map_err(|e| ApiError::unprocessable("csv", format!("no header row: {e}")))?
        .clone();
    let mut columns = Vec::new();
    for h in &header {
        let h = h.to_ascii_lowercase();
        if !CSV_COLUMNS.contains(&h.as_str()) {
            return Err(ApiError::unprocessable(
                "csv",
                format!(
                    "unknown column {h:?}; columns are {}",
                    CSV_COLUMNS.join(", ")
                ),
            ));
        }
        if columns.contains(&h) {
            return Err(ApiError::unprocessable(
                "csv",
                format!("column {h:?} appears twice"),
            ));
        }
        columns.push(h);
    }
    if !columns.iter().any(|c| c == "name") {
        return Err(ApiError::unprocessable("csv", "a name column is required"));
    }
    let mut rows = Vec::new();
    let mut errors = Vec::new();
    for (i, record) in reader.records().enumerate() {
        let field = format!("rows[{}]", i + 1);
        let record = match record {
            Ok(r) => r,
            Err(e) => {
                errors.push(FieldError {
                    field,
                    message: format!("not a CSV row: {e}"),
                });
                continue;
            }
        };
        let mut row = ImportRow::default();
        for (column, value) in columns.iter().zip(record.iter()) {
            if value.is_empty() {
                continue;
            }
            match column.as_str() {
                "name" => row.name = value.to_owned(),
                "id" => match value.parse() {
                    Ok(id) => row.id = Some(id),
                    Err(_) => errors.push(FieldError {
                        field: format!("{field}.id"),
                        message: "not a UUID".into(),
                    }),
                },
                "tags" => {
                    row.tags = value
                        .split(';')
                        .map(str::trim)
                        .filter(|t| !t.is_empty())
                        .map(str::to_owned)
                        .collect();
                }
                "metadata" => match serde_json::from_str(value) {
                    Ok(m) => row.metadata = Some(m),
                    Err(e) => errors.push(FieldError {
                        field: format!("{field}.metadata"),
                        message: format!("not JSON: {e}"),
                    }),
                },
                "certificate" => row.certificate = Some(value.to_owned()),
                _ => row.csr = Some(value.to_owned()),
            }
        }
        rows.push(row);
    }
    if !errors.is_empty() {
        return Err(rows_invalid(errors, rows.len()));
    }
    Ok(rows)
}

fn rows_invalid(mut errors: Vec<FieldError>, total: usize) -> ApiError {
    errors.sort_by_key(|e| row_of(&e.field));
    let bad: HashSet<usize> = errors.iter().map(|e| row_of(&e.field)).collect();
    ApiError {
        errors,
        ..ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!(
                "{} of {total} rows are invalid; nothing was imported",
                bad.len()
            ),
        )
    }
}

/// The row number in `rows[n].field`.
fn row_of(field: &str) -> usize {
    field
        .strip_prefix("rows[")
        .and_then(|r| r.split(']').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// What a row needs to become true.
enum Step {
    /// A new device, with the row's certificate if it has one.
    Create {
        device: Device,
        cert: Option<CertSource>,
    },
    /// An existing device gets a certificate.
    AddCert { device: Device, cert: CertSource },
    Unchanged {
        device: Device,
        cert: Option<Box<Certificate>>,
    },
}

enum CertSource {
    /// A certificate from the factory, checked against the tenant's CAs.
    Imported {
        info: Box<CertInfo>,
        authority: AuthorityId,
    },
    Csr(String),
}

struct Plan {
    steps: Vec<(String, Step)>,
}

/// Checks every row against the request and the store; the plan, or every
/// error.
async fn plan(s: &AppState, tenant: TenantId, rows: Vec<ImportRow>) -> Result<Plan, ApiError> {
    let total = rows.len();
    let mut c = Checker::new();
    let mut names = HashSet::new();
    let mut ids = HashSet::new();
    let mut fingerprints = HashSet::new();
    let mut keys = HashSet::new();
    let mut checked: Vec<Option<(CertSource, String)>> = Vec::with_capacity(total);
    for (i, row) in rows.iter().enumerate() {
        let f = format!("rows[{}]", i + 1);
        c.name(&format!("{f}.name"), &row.name);
        c.tags(&format!("{f}.tags"), &row.tags);
        if let Some(m) = &row.metadata {
            c.metadata(&format!("{f}.metadata"), m);
        }
        if !names.insert(row.name.as_str()) {
            c.fail(&format!("{f}.name"), "appears twice in this batch");
        }
        if row.id.is_some_and(|id| !ids.insert(id)) {
            c.fail(&format!("{f}.id"), "appears twice in this batch");
        }
        checked.push(match (&row.certificate, &row.csr) {
            (Some(_), Some(_)) => {
                c.fail(&f, "give a certificate or a CSR, not both");
                None
            }
            (Some(pem), None) => match s.pki.check_imported(pem, tenant) {
                Ok((info, authority)) => {
                    let named: Option<uuid::Uuid> =
                        info.device_uri.as_deref().and_then(|u| u.parse().ok());
                    if let (Some(named), Some(id)) = (named, row.id)
                        && named != id.0
                    {
                        c.fail(
                            &format!("{f}.certificate"),
                            "names another device id than the row's id",
                        );
                    }
                    if !fingerprints.insert(info.fingerprint.clone()) {
                        c.fail(&format!("{f}.certificate"), "appears twice in this batch");
                    }
                    let key = info.public_key_sha256.clone();
                    Some((
                        CertSource::Imported {
                            info: Box::new(info),
                            authority,
                        },
                        key,
                    ))
                }
                Err(e) => {
                    c.fail(&format!("{f}.certificate"), e);
                    None
                }
            },
            (None, Some(csr)) => match check_csr(csr.as_bytes()) {
                Ok(checked) => Some((CertSource::Csr(csr.clone()), checked.public_key_sha256)),
                Err(e) => {
                    c.fail(&format!("{f}.csr"), e.to_string());
                    None
                }
            },
            (None, None) => None,
        });
        if let Some((_, key)) = checked.last().and_then(Option::as_ref)
            && !keys.insert(key.clone())
        {
            c.fail(&f, "its public key appears twice in this batch");
        }
    }
    let mut errors = match c.finish() {
        Ok(()) => Vec::new(),
        Err(e) => e.errors,
    };

    let names: Vec<String> = rows.iter().map(|r| r.name.clone()).collect();
    let existing: HashMap<String, Device> = s
        .store
        .devices_named(tenant, &names)
        .await?
        .into_iter()
        .map(|d| (d.name.clone(), d))
        .collect();
    let now = now_millis();
    let mut steps = Vec::with_capacity(total);
    for (i, (row, cert)) in rows.into_iter().zip(checked).enumerate() {
        let f = format!("rows[{}]", i + 1);
        let mut fail = |field: &str, message: String| {
            errors.push(FieldError {
                field: format!("{f}{field}"),
                message,
            });
        };
        let step = match existing.get(&row.name) {
            Some(d) => {
                if row.id.is_some_and(|id| id != d.id) {
                    fail(
                        ".name",
                        format!("already names device {} in this tenant", d.id),
                    );
                    continue;
                }
                if d.tags != row.tags || row.metadata.as_ref().is_some_and(|m| *m != d.metadata) {
                    fail(
                        "",
                        "the device exists with other tags or metadata; change them with PATCH /devices/{id}".into(),
                    );
                    continue;
                }
                match cert {
                    None => Step::Unchanged {
                        device: d.clone(),
                        cert: None,
                    },
                    Some((source, key)) => match held(s, d, &source, &key).await {
                        Ok(Some(c)) => Step::Unchanged {
                            device: d.clone(),
                            cert: Some(Box::new(c)),
                        },
                        Ok(None) => Step::AddCert {
                            device: d.clone(),
                            cert: source,
                        },
                        Err(Held::Elsewhere(other)) => {
                            fail(".certificate", format!("is already held by device {other}"));
                            continue;
                        }
                        Err(Held::Store(e)) => return Err(e.into()),
                    },
                }
            }
            None => {
                // A factory certificate that names a device id gives it.
                let named = match &cert {
                    Some((CertSource::Imported { info, .. }, _)) => {
                        info.device_uri.as_deref().and_then(|u| u.parse().ok())
                    }
                    _ => None,
                };
                let id = row.id.or(named.map(DeviceId));
                if let Some(id) = id
                    && s.store.device(id).await?.is_some()
                {
                    fail(".id", "is already used by another device".into());
                    continue;
                }
                if let Some((CertSource::Imported { info, .. }, _)) = &cert
                    && let Some(holder) = s
                        .store
                        .certificate_by_fingerprint(&info.fingerprint)
                        .await?
                {
                    fail(
                        ".certificate",
                        format!("is already held by device {}", holder.device_id),
                    );
                    continue;
                }
                Step::Create {
                    device: Device {
                        id: id.unwrap_or_else(DeviceId::new),
                        tenant_id: tenant,
                        name: row.name.clone(),
                        tags: row.tags,
                        metadata: row.metadata.unwrap_or_else(empty_object),
                        state: DeviceState::Active,
                        created_at: now,
                        updated_at: now,
                    },
                    cert: cert.map(|(c, _)| c),
                }
            }
        };
        steps.push((row.name, step));
    }
    if !errors.is_empty() {
        return Err(rows_invalid(errors, total));
    }
    Ok(Plan { steps })
}

enum Held {
    Elsewhere(DeviceId),
    Store(moat_core::store::StoreError),
}

/// The certificate `device` already holds for `source` (the same
/// certificate, or one issued for the same key), if any.
async fn held(
    s: &AppState,
    device: &Device,
    source: &CertSource,
    key: &str,
) -> Result<Option<Certificate>, Held> {
    if let CertSource::Imported { info, .. } = source {
        return match s
            .store
            .certificate_by_fingerprint(&info.fingerprint)
            .await
            .map_err(Held::Store)?
        {
            Some(h) if h.device_id == device.id => Ok(Some(h)),
            Some(h) => Err(Held::Elsewhere(h.device_id)),
            None => Ok(None),
        };
    }
    let now = Utc::now();
    let certs = s
        .store
        .device_certificates(device.id)
        .await
        .map_err(Held::Store)?;
    Ok(certs.into_iter().rev().find(|c| {
        c.is_valid_at(now)
            && moat_pki::inspect::cert_info_pem(&c.cert_pem)
                .is_ok_and(|i| i.public_key_sha256 == key)
    }))
}

impl Plan {
    fn report(&self, dry_run: bool) -> ImportReport {
        let results = self
            .steps
            .iter()
            .enumerate()
            .map(|(i, (name, step))| {
                let (device, status, cert) = match step {
                    Step::Create { device, .. } => (device, ImportStatus::WouldCreate, None),
                    Step::AddCert { device, .. } => (device, ImportStatus::WouldUpdate, None),
                    Step::Unchanged { device, cert } => {
                        (device, ImportStatus::Unchanged, cert.as_ref())
                    }
                };
                ImportResult {
                    row: i + 1,
                    name: name.clone(),
                    device_id: device.id,
                    status,
                    certificate_id: cert.map(|c| c.id),
                    certificate_pem: cert
                        .filter(|c| c.origin == CertificateOrigin::Issued)
                        .map(|c| c.cert_pem.clone()),
                }
            })
            .collect();
        summarize(dry_run, results, 0)
    }

    /// Signs the CSRs and stores everything in one transaction.
    async fn apply(
        self,
        s: &AppState,
        caller: &Caller,
        tenant: TenantId,
    ) -> Result<ImportReport, ApiError> {
        let mut changes = Vec::new();
        let mut results = Vec::with_capacity(self.steps.len());
        let mut new_certs = Vec::new();
        for (i, (name, step)) in self.steps.into_iter().enumerate() {
            let (device, status, cert_source) = match step {
                Step::Create { device, cert } => {
                    changes.push(Change::InsertDevice(device.clone()));
                    (device, ImportStatus::Created, cert)
                }
                Step::AddCert { device, cert } => (device, ImportStatus::Updated, Some(cert)),
                Step::Unchanged { device, cert } => {
                    results.push(ImportResult {
                        row: i + 1,
                        name,
                        device_id: device.id,
                        status: ImportStatus::Unchanged,
                        certificate_id: cert.as_ref().map(|c| c.id),
                        certificate_pem: cert
                            .filter(|c| c.origin == CertificateOrigin::Issued)
                            .map(|c| c.cert_pem),
                    });
                    continue;
                }
            };
            let cert = match cert_source {
                Some(CertSource::Imported { info, authority }) => Some((
                    s.pki.record(
                        &info,
                        &device,
                        Some(authority),
                        CertificateOrigin::Imported,
                        &crate::pki::pem(&info.der),
                    ),
                    false,
                )),
                Some(CertSource::Csr(csr)) => {
                    let body = NewCertificate {
                        csr: Some(csr),
                        ..NewCertificate::default()
                    };
                    Some((mint(s, &device, &body).await?.record, true))
                }
                None => None,
            };
            if let Some((c, _)) = &cert {
                changes.push(Change::InsertCertificate(c.clone()));
                new_certs.push(c.clone());
            }
            results.push(ImportResult {
                row: i + 1,
                name,
                device_id: device.id,
                status,
                certificate_id: cert.as_ref().map(|(c, _)| c.id),
                certificate_pem: cert
                    .as_ref()
                    .filter(|(_, issued)| *issued)
                    .map(|(c, _)| c.cert_pem.clone()),
            });
        }
        let issued = new_certs.len();
        let report = summarize(false, results, issued);
        if !changes.is_empty() {
            let record = caller
                .record(
                    "device.import",
                    format!("tenant:{tenant}"),
                    Outcome::Success,
                )
                .tenant(tenant)
                .detail(serde_json::json!({
                    "total": report.total, "created": report.created, "updated": report.updated,
                    "unchanged": report.unchanged, "certificates": issued,
                }));
            s.store.apply(changes, Some(record)).await?;
            for c in &new_certs {
                s.pki.index_cert(c);
            }
        }
        Ok(report)
    }
}

fn summarize(
    dry_run: bool,
    results: Vec<ImportResult>,
    certificates_issued: usize,
) -> ImportReport {
    let count = |f: &dyn Fn(ImportStatus) -> bool| results.iter().filter(|r| f(r.status)).count();
    ImportReport {
        dry_run,
        total: results.len(),
        created: count(&|s| matches!(s, ImportStatus::Created | ImportStatus::WouldCreate)),
        updated: count(&|s| matches!(s, ImportStatus::Updated | ImportStatus::WouldUpdate)),
        unchanged: count(&|s| s == ImportStatus::Unchanged),
        certificates_issued,
        results,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn csv(text: &str) -> Result<Vec<ImportRow>, ApiError> {
        parse_csv(text.as_bytes())
    }

    #[test]
    fn csv_rows_take_their_columns_in_any_order() {
        let rows = csv("tags,name,id\n\
             a;b ; c,sensor-1,0190a0a0-0000-7000-8000-000000000001\n\
             ,sensor-2,\n")
        .unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].name, "sensor-1");
        assert_eq!(rows[0].tags, ["a", "b", "c"]);
        assert!(rows[0].id.is_some());
        assert!(rows[1].tags.is_empty() && rows[1].id.is_none());
    }

    #[test]
    fn a_pem_fits_in_a_quoted_csv_cell() {
        let rows = csv("name,csr\nx,\"-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\"\n").unwrap();
        assert!(rows[0].csr.as_deref().unwrap().contains("\nAAAA\n"));
    }

    #[test]
    fn csv_errors_name_the_row() {
        let e = csv("name,id\nok,\nbad,not-a-uuid\n").unwrap_err();
        assert_eq!(e.errors[0].field, "rows[2].id");
        assert!(
            csv("name,colour\nx,red\n")
                .unwrap_err()
                .detail
                .contains("unknown column")
        );
        assert!(csv("id\n").unwrap_err().detail.contains("name column"));
        assert!(
            csv("name,name\nx,y\n")
                .unwrap_err()
                .detail
                .contains("twice")
        );
    }

    #[test]
    fn errors_sort_by_row_number_not_text() {
        let e = rows_invalid(
            vec![
                FieldError {
                    field: "rows[10].name".into(),
                    message: String::new(),
                },
                FieldError {
                    field: "rows[9].csr".into(),
                    message: String::new(),
                },
            ],
            12,
        );
        assert_eq!(e.errors[0].field, "rows[9].csr");
        assert!(e.detail.starts_with("2 of 12 rows"));
    }
}
