//! Where `moat login` keeps its tokens: a JSON file only its owner can read
//! (0600, in a 0700 directory).

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct Credentials {
    pub(crate) url: String,
    /// Absolute path of the CA certificate that signed the server's.
    pub(crate) cacert: PathBuf,
    pub(crate) username: String,
    pub(crate) access_token: String,
    pub(crate) refresh_token: String,
}

/// `$MOAT_CREDENTIALS`, else `$XDG_CONFIG_HOME/moat/credentials.json`, else
/// `~/.config/moat/credentials.json`.
pub(crate) fn path() -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os("MOAT_CREDENTIALS") {
        return Ok(PathBuf::from(p));
    }
    let config = match std::env::var_os("XDG_CONFIG_HOME") {
        Some(x) if !x.is_empty() => PathBuf::from(x),
        _ => PathBuf::from(
            std::env::var_os("HOME").context("HOME is not set; set MOAT_CREDENTIALS")?,
        )
        .join(".config"),
    };
    Ok(config.join("moat").join("credentials.json"))
}

pub(crate) fn load(path: &Path) -> anyhow::Result<Option<Credentials>> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(
            serde_json::from_str(&text).with_context(|| format!("reading {}", path.display()))?,
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

pub(crate) fn save(path: &Path, creds: &Credentials) -> anyhow::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        set_mode(dir, 0o700)?;
    }
    // Write a private temporary file, then rename: no moment where the
    // tokens sit in a file others could read.
    let tmp = path.with_extension("tmp");
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let mut f = opts
        .open(&tmp)
        .with_context(|| format!("writing {}", tmp.display()))?;
    set_mode(&tmp, 0o600)?;
    f.write_all(serde_json::to_string_pretty(creds)?.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

#[cfg(unix)]
fn set_mode(path: &Path, mode: u32) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("restricting {}", path.display()))
}

#[cfg(not(unix))]
fn set_mode(_: &Path, _: u32) -> anyhow::Result<()> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saved_owner_only_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub").join("credentials.json");
        let c = Credentials {
            url: "https://localhost:8443".into(),
            cacert: "/tmp/ca.pem".into(),
            username: "admin".into(),
            access_token: "a".into(),
            refresh_token: "r".into(),
        };
        save(&path, &c).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(
                std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
                0o600
            );
            assert_eq!(
                std::fs::metadata(path.parent().unwrap())
                    .unwrap()
                    .permissions()
                    .mode()
                    & 0o777,
                0o700
            );
        }
        assert_eq!(load(&path).unwrap().unwrap().username, "admin");
        assert!(load(&dir.path().join("none.json")).unwrap().is_none());
    }
}
