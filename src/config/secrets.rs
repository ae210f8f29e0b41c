//! `*_file` keys: secrets (and key lists) read from files, as orchestrators mount them
//! (Kubernetes Secret volumes, Docker secrets, systemd credentials), so the config file itself
//! holds none and needs no rendering step. Files are read at start and on every reload.

use std::path::Path;

use super::{ConfigError, err};

/// A single secret: the file's content without one trailing line break (editors and
/// `echo` add one; Kubernetes Secrets usually have none). Refuses an empty one.
pub(crate) fn read_secret(key: &str, path: &Path) -> Result<String, ConfigError> {
    let text = read(key, path)?;
    let text = text
        .strip_suffix("\r\n")
        .or_else(|| text.strip_suffix('\n'))
        .unwrap_or(&text);
    if text.is_empty() {
        return Err(err(key, format!("{} is empty", path.display())));
    }
    if text.contains('\0') {
        return Err(err(key, format!("{} contains a NUL byte", path.display())));
    }
    Ok(text.to_owned())
}

/// One entry per line (key hashes); blank lines and `#` comments skipped, spaces trimmed.
pub(crate) fn read_list(key: &str, path: &Path) -> Result<Vec<String>, ConfigError> {
    Ok(read(key, path)?
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_owned)
        .collect())
}

fn read(key: &str, path: &Path) -> Result<String, ConfigError> {
    // The error names the file, never its content.
    std::fs::read_to_string(path)
        .map_err(|e| err(key, format!("cannot read {}: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_trailing_line_break_is_dropped_and_empty_files_refused() {
        let dir = std::env::temp_dir().join(format!("sluice-secrets-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("pw");
        for (content, expected) in [
            ("s3cret\n", Some("s3cret")),
            ("s3cret\r\n", Some("s3cret")),
            ("s3cret", Some("s3cret")),
            (" spaced \n\n", Some(" spaced \n")),
            ("\n", None),
            ("", None),
        ] {
            std::fs::write(&file, content).unwrap();
            let got = read_secret("k", &file).ok();
            assert_eq!(got.as_deref(), expected, "{content:?}");
        }
        std::fs::write(&file, "# keys\nsha256:aa\n\n  sha256:bb  \n").unwrap();
        assert_eq!(read_list("k", &file).unwrap(), ["sha256:aa", "sha256:bb"]);
        let missing = read_secret("upstreams[0].password_file", &dir.join("nope"))
            .unwrap_err()
            .to_string();
        assert!(
            missing.starts_with("upstreams[0].password_file: cannot read"),
            "{missing}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
