//! `moat device import`: factory provisioning from a CSV or JSON file.
//!
//! The server takes at most 1000 rows per request and stores a request all
//! or nothing. A file is bigger than that, so it is cut into batches and
//! every batch is first sent as a dry run: an error anywhere stops the
//! import before anything is stored, and is reported with its row number in
//! the file, not in the batch. Only then are the batches imported one by
//! one. Importing the same rows again answers `unchanged`, so a run cut
//! short is finished by running it again.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use super::Global;
use super::certificates::{file_stem, write_file};
use super::http::{self, Body, Session};
use super::output::{self, Format, Kind};
use super::resources::{tenant_id, with_query};

/// The most rows the server takes in one request.
const MAX_BATCH: u32 = 1000;

#[derive(clap::Args, Debug)]
pub(crate) struct ImportArgs {
    /// A CSV file (a header row; columns `name` (required), `id`, `tags`
    /// (`;`-separated), `certificate`, `csr`) or a JSON file
    /// (`{"devices": [{"name": …}, …]}`).
    file: PathBuf,
    /// The tenant (name or id) the devices go to [default: yours].
    #[arg(long)]
    tenant: Option<String>,
    /// Only check the file; import nothing.
    #[arg(long)]
    dry_run: bool,
    /// Rows per request (1–1000); each batch is stored all or nothing.
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_BATCH)))]
    batch_size: u32,
    /// The file's format [default: from its extension].
    #[arg(long, value_enum)]
    format: Option<ImportFormat>,
    /// Write each certificate issued for a CSR row into this directory, as
    /// `<name>.crt`.
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ImportFormat {
    Csv,
    Json,
}

/// The file's rows, kept in the file's own format: the server reads CSV
/// itself, so a CSV file is sent as CSV (re-written per batch, header first).
enum Rows {
    Csv {
        header: csv::StringRecord,
        records: Vec<csv::StringRecord>,
    },
    Json(Vec<Value>),
}

impl Rows {
    fn read(path: &Path, format: ImportFormat) -> anyhow::Result<Self> {
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let rows = match format {
            ImportFormat::Csv => {
                let mut r = csv::ReaderBuilder::new().from_reader(bytes.as_slice());
                let header = r
                    .headers()
                    .with_context(|| format!("reading {}", path.display()))?
                    .clone();
                let records = r
                    .records()
                    .collect::<Result<Vec<_>, _>>()
                    .with_context(|| format!("reading {}", path.display()))?;
                Rows::Csv { header, records }
            }
            ImportFormat::Json => {
                let v: Value = serde_json::from_slice(&bytes)
                    .with_context(|| format!("reading {} as JSON", path.display()))?;
                match v {
                    Value::Object(mut m) => match m.remove("devices") {
                        Some(Value::Array(a)) => Rows::Json(a),
                        _ => bail!("{}: expected {{\"devices\": [...]}}", path.display()),
                    },
                    Value::Array(a) => Rows::Json(a),
                    _ => bail!("{}: expected {{\"devices\": [...]}}", path.display()),
                }
            }
        };
        if rows.len() == 0 {
            bail!("{}: no rows to import", path.display());
        }
        Ok(rows)
    }

    fn len(&self) -> usize {
        match self {
            Rows::Csv { records, .. } => records.len(),
            Rows::Json(v) => v.len(),
        }
    }

    /// The name on row `i` (0-based), if it has one.
    fn name(&self, i: usize) -> Option<&str> {
        match self {
            Rows::Csv { header, records } => {
                let col = header.iter().position(|h| h.trim() == "name")?;
                records.get(i)?.get(col)
            }
            Rows::Json(v) => v.get(i)?["name"].as_str(),
        }
    }

    /// The request body for rows `range`.
    fn body(&self, range: Range<usize>) -> anyhow::Result<Body> {
        Ok(match self {
            Rows::Csv { header, records } => {
                let mut w = csv::Writer::from_writer(Vec::new());
                w.write_record(header)?;
                for r in &records[range] {
                    w.write_record(r)?;
                }
                Body::raw("text/csv", w.into_inner()?)
            }
            Rows::Json(v) => Body::json(&json!({ "devices": &v[range] })),
        })
    }
}

/// Something wrong with the file, where the file has it.
#[derive(Debug, PartialEq)]
struct RowError {
    /// 1-based in the whole file (a CSV's header not counted).
    row: Option<usize>,
    name: Option<String>,
    field: String,
    message: String,
}

impl std::fmt::Display for RowError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.row, &self.name) {
            (Some(r), Some(n)) => write!(f, "row {r} ({n})")?,
            (Some(r), None) => write!(f, "row {r}")?,
            (None, _) => f.write_str("file")?,
        }
        if !self.field.is_empty() {
            write!(f, ": {}", self.field)?;
        }
        write!(f, ": {}", self.message)
    }
}

/// Splits a problem's field such as `rows[3].csr` into the 1-based row in
/// the request and the field within it (`csr`, or empty).
fn row_field(field: &str) -> Option<(usize, &str)> {
    let rest = field
        .strip_prefix("rows[")
        .or_else(|| field.strip_prefix("devices["))?;
    let (n, rest) = rest.split_once(']')?;
    Some((n.parse().ok()?, rest.trim_start_matches('.')))
}

/// The errors of a 422 answer for the batch starting at row `start`
/// (0-based), with rows numbered as in the file.
fn row_errors(body: &Value, start: usize, rows: &Rows) -> Vec<RowError> {
    let listed = body["errors"].as_array().map_or(&[][..], Vec::as_slice);
    if listed.is_empty() {
        return vec![RowError {
            row: None,
            name: None,
            field: String::new(),
            message: body["detail"]
                .as_str()
                .map_or_else(|| body.to_string(), str::to_owned),
        }];
    }
    listed
        .iter()
        .map(|e| {
            let field = e["field"].as_str().unwrap_or_default();
            let message = e["message"].as_str().unwrap_or("?").to_owned();
            match row_field(field) {
                Some((n, f)) => {
                    let row = start + n;
                    RowError {
                        row: Some(row),
                        name: rows.name(row - 1).map(str::to_owned),
                        field: f.to_owned(),
                        message,
                    }
                }
                None => RowError {
                    row: None,
                    name: None,
                    field: field.to_owned(),
                    message,
                },
            }
        })
        .collect()
}

/// Names that appear on more than one row: a name is unique in a tenant,
/// and batches are checked one at a time, so the server would not see it.
fn duplicate_names(rows: &Rows) -> Vec<RowError> {
    let mut first: HashMap<&str, usize> = HashMap::new();
    let mut errors = Vec::new();
    for i in 0..rows.len() {
        let Some(name) = rows.name(i) else { continue };
        if let Some(&j) = first.get(name) {
            errors.push(RowError {
                row: Some(i + 1),
                name: Some(name.to_owned()),
                field: "name".into(),
                message: format!("also on row {}", j + 1),
            });
        } else {
            first.insert(name, i);
        }
    }
    errors
}

/// What a batch came to: its answer, or the rows it refused.
enum Outcome {
    Answered(Value),
    Refused(Vec<RowError>),
}

async fn send(
    s: &mut Session,
    rows: &Rows,
    range: Range<usize>,
    dry_run: bool,
    tenant: Option<&str>,
) -> anyhow::Result<Outcome> {
    let path = with_query(
        "/devices/import",
        &[
            ("dry_run", Some(dry_run.to_string())),
            ("tenant_id", tenant.map(str::to_owned)),
        ],
    );
    let start = range.start;
    let (status, v) = s
        .request(Method::POST, &path, Some(rows.body(range)?))
        .await?;
    match status {
        StatusCode::UNPROCESSABLE_ENTITY => Ok(Outcome::Refused(row_errors(&v, start, rows))),
        _ => http::check(status, v).map(Outcome::Answered),
    }
}

fn bar(len: usize, message: &'static str) -> ProgressBar {
    // indicatif hides itself off a terminal too; saying so keeps captured
    // output clean whatever the environment claims.
    let target = if std::io::stderr().is_terminal() {
        ProgressDrawTarget::stderr()
    } else {
        ProgressDrawTarget::hidden()
    };
    let pb = ProgressBar::with_draw_target(Some(len as u64), target);
    let style = ProgressStyle::with_template("{msg:>9} [{bar:40}] {pos}/{len} rows")
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
    pb.set_style(style);
    pb.set_message(message);
    pb
}

/// The counts and per-row results over every batch.
#[derive(Default)]
struct Totals {
    total: u64,
    created: u64,
    unchanged: u64,
    certificates_issued: u64,
    results: Vec<Value>,
}

impl Totals {
    /// Adds a batch's answer, renumbering its rows as in the file.
    fn add(&mut self, v: &Value, start: usize) {
        let n = |k: &str| v[k].as_u64().unwrap_or(0);
        self.total += n("total");
        self.created += n("created");
        self.unchanged += n("unchanged");
        self.certificates_issued += n("certificates_issued");
        for r in v["results"].as_array().into_iter().flatten() {
            let mut r = r.clone();
            let row = r["row"].as_u64().unwrap_or(0) + start as u64;
            r["row"] = json!(row);
            self.results.push(r);
        }
    }

    fn count(&self, status: &str) -> usize {
        self.results
            .iter()
            .filter(|r| r["status"].as_str() == Some(status))
            .count()
    }
}

pub(crate) async fn run(s: &mut Session, a: ImportArgs, g: &Global) -> anyhow::Result<ExitCode> {
    let format = match a.format {
        Some(f) => f,
        None => match a.file.extension().and_then(|e| e.to_str()) {
            Some(e) if e.eq_ignore_ascii_case("csv") => ImportFormat::Csv,
            Some(e) if e.eq_ignore_ascii_case("json") => ImportFormat::Json,
            _ => bail!("{}: pass --format csv or --format json", a.file.display()),
        },
    };
    let rows = Rows::read(&a.file, format)?;
    let tenant = tenant_id(s, a.tenant.as_deref()).await?;
    let size = a.batch_size as usize;
    let batches: Vec<Range<usize>> = (0..rows.len())
        .step_by(size)
        .map(|start| start..(start + size).min(rows.len()))
        .collect();

    // Check everything first.
    let mut errors = duplicate_names(&rows);
    let mut checked = Totals::default();
    let pb = bar(rows.len(), "checking");
    for range in &batches {
        let outcome = send(s, &rows, range.clone(), true, tenant.as_deref()).await;
        if outcome.is_err() {
            pb.finish_and_clear();
        }
        match outcome? {
            Outcome::Answered(v) => checked.add(&v, range.start),
            Outcome::Refused(e) => errors.extend(e),
        }
        pb.inc(range.len() as u64);
    }
    pb.finish_and_clear();
    if !errors.is_empty() {
        errors.sort_by_key(|e| e.row);
        for e in &errors {
            eprintln!("{e}");
        }
        bail!(
            "{} error(s) in {}; nothing was imported",
            errors.len(),
            a.file.display()
        );
    }
    if a.dry_run {
        if g.output == Format::Json {
            print_json(&checked, true);
        } else {
            println!(
                "checked {} rows: {} would be created, {} unchanged; nothing imported (--dry-run)",
                rows.len(),
                checked.count("would_create"),
                checked.count("unchanged")
            );
        }
        return Ok(ExitCode::SUCCESS);
    }

    let mut done = Totals::default();
    let pb = bar(rows.len(), "importing");
    for (i, range) in batches.iter().enumerate() {
        let failed = |why: String| {
            anyhow::anyhow!(
                "batch {} of {} (rows {}–{}) was not imported: {why}\n\
                 the batches before it were; running the same import again is safe",
                i + 1,
                batches.len(),
                range.start + 1,
                range.end
            )
        };
        match send(s, &rows, range.clone(), false, tenant.as_deref()).await {
            Ok(Outcome::Answered(v)) => done.add(&v, range.start),
            Ok(Outcome::Refused(e)) => {
                pb.finish_and_clear();
                let lines: Vec<String> = e.iter().map(ToString::to_string).collect();
                return Err(failed(lines.join("\n")));
            }
            Err(e) => {
                pb.finish_and_clear();
                return Err(failed(format!("{e:#}")));
            }
        }
        pb.inc(range.len() as u64);
    }
    pb.finish_and_clear();
    if let Some(dir) = &a.out {
        write_certificates(&done, dir)?;
    }
    if g.output == Format::Json {
        print_json(&done, false);
    } else {
        println!(
            "created {}, unchanged {}, certificates issued {} ({} rows)",
            done.created, done.unchanged, done.certificates_issued, done.total
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn print_json(t: &Totals, dry_run: bool) {
    let v = json!({
        "dry_run": dry_run,
        "total": t.total,
        "created": t.created,
        "unchanged": t.unchanged,
        "certificates_issued": t.certificates_issued,
        "results": t.results,
    });
    output::print(&v, Kind::Device, Format::Json);
}

fn write_certificates(t: &Totals, dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut n = 0;
    for r in &t.results {
        let (Some(name), Some(pem)) = (r["name"].as_str(), r["certificate_pem"].as_str()) else {
            continue;
        };
        write_file(
            &dir.join(format!("{}.crt", file_stem(name)?)),
            pem.as_bytes(),
            false,
        )?;
        n += 1;
    }
    eprintln!("{n} certificate(s) written to {}", dir.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn csv_rows(names: &[&str]) -> Rows {
        Rows::Csv {
            header: csv::StringRecord::from(vec!["name", "tags"]),
            records: names
                .iter()
                .map(|n| csv::StringRecord::from(vec![*n, ""]))
                .collect(),
        }
    }

    #[test]
    fn fields_name_the_row_and_what_is_in_it() {
        assert_eq!(row_field("rows[3].csr"), Some((3, "csr")));
        assert_eq!(row_field("rows[12]"), Some((12, "")));
        assert_eq!(row_field("devices[1].name"), Some((1, "name")));
        assert_eq!(row_field("rows"), None);
        assert_eq!(row_field("rows[x].csr"), None);
    }

    #[test]
    fn batch_rows_are_numbered_as_in_the_file() {
        let rows = csv_rows(&["a", "b", "c", "d", "e"]);
        let body = json!({"status": 422, "errors": [
            {"field": "rows[2].csr", "message": "not a CSR"},
            {"field": "body", "message": "too big"},
        ]});
        let e = row_errors(&body, 2, &rows);
        assert_eq!(e[0].to_string(), "row 4 (d): csr: not a CSR");
        assert_eq!(e[1].to_string(), "file: body: too big");
        let bare = row_errors(&json!({"detail": "invalid body"}), 0, &rows);
        assert_eq!(bare[0].to_string(), "file: invalid body");
    }

    #[test]
    fn a_name_twice_in_the_file_is_an_error() {
        let e = duplicate_names(&csv_rows(&["a", "b", "a"]));
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].to_string(), "row 3 (a): name: also on row 1");
    }

    #[test]
    fn csv_batches_carry_the_header_and_keep_multiline_fields() {
        let rows = Rows::Csv {
            header: csv::StringRecord::from(vec!["name", "csr"]),
            records: vec![
                csv::StringRecord::from(vec!["a", "-----BEGIN\nX\n-----END"]),
                csv::StringRecord::from(vec!["b", ""]),
            ],
        };
        let body = rows.body(1..2).unwrap();
        let mut r = csv::Reader::from_reader(body_bytes(&body));
        let got: Vec<csv::StringRecord> = r.records().map(Result::unwrap).collect();
        assert_eq!(got, vec![csv::StringRecord::from(vec!["b", ""])]);
        let all = rows.body(0..2).unwrap();
        let mut r = csv::Reader::from_reader(body_bytes(&all));
        assert_eq!(
            &r.records().next().unwrap().unwrap()[1],
            "-----BEGIN\nX\n-----END"
        );
    }

    fn body_bytes(b: &Body) -> &[u8] {
        b.bytes()
    }
}
