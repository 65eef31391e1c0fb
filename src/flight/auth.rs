//! Bearer tokens and roles for the Flight service (`--flight-tokens FILE`).
//!
//! The file has one token per line, `ROLE TOKEN [EXPIRES]`:
//! ```text
//! # role   token                              expires (RFC 3339, optional)
//! read     0d1f7c5e9a0b4c3e8f2a6b1d7e4c9a3f   2027-06-30T00:00:00Z
//! write    5b8e2f4a1c9d7e3b6a0f8c2d4e1b7a9c
//! admin    9c3a7e1f5b2d8c4a6e0b3f9d1c7a5e2b
//! ```
//! Roles nest: `read` lists tables and reads them; `write` also puts and
//! deletes; `admin` also ingests files from the server's own file system and
//! reads the server's stats. Tokens are at least 16 characters; a file that
//! other users can read is refused (as ssh refuses a readable key). The file
//! is read again when it changes (checked at most once a second), so tokens
//! can be added, rotated and revoked without a restart; a file that became
//! unreadable or invalid keeps the last good tokens and is logged.
//!
//! Clients send `authorization: Bearer TOKEN` with every call (pyarrow:
//! `FlightCallOptions(headers=[(b"authorization", b"Bearer " + token)])`), or
//! call `handshake` with basic authentication whose password is the token
//! (pyarrow's `authenticate_basic_token(user, token)`): the reply carries the
//! same `authorization: Bearer` header for the calls after it.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

/// What a caller may do; each role can do everything the ones before it can.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    Read,
    Write,
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Read => "read",
            Role::Write => "write",
            Role::Admin => "admin",
        }
    }

    fn parse(s: &str) -> Option<Role> {
        match s {
            "read" | "read-only" => Some(Role::Read),
            "write" | "read-write" => Some(Role::Write),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }
}

/// Shortest token accepted: shorter ones are guessable.
const TOKEN_MIN_CHARS: usize = 16;
/// How often a request may look at the file's modification time.
const RECHECK: Duration = Duration::from_secs(1);

#[derive(Debug, Clone)]
struct Grant {
    role: Role,
    expires: Option<SystemTime>,
}

/// Why a caller was refused (becomes an `Unauthenticated` status).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    Missing,
    Unknown,
    Expired(String),
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::Missing => write!(
                f,
                "this server requires a token: send the header `authorization: Bearer <token>`"
            ),
            Refusal::Unknown => write!(f, "the token is not known to this server"),
            Refusal::Expired(at) => write!(f, "the token expired at {at}"),
        }
    }
}

/// The tokens of a token file, read again when the file changes.
#[derive(Debug)]
pub struct Tokens {
    path: PathBuf,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    grants: HashMap<String, Grant>,
    modified: Option<SystemTime>,
    checked: Instant,
}

impl Tokens {
    /// Reads the token file; every problem is an error naming the file and line.
    pub fn load(path: &Path) -> Result<Tokens, String> {
        let (grants, modified) = read(path)?;
        Ok(Tokens {
            path: path.to_owned(),
            state: Mutex::new(State {
                grants,
                modified,
                checked: Instant::now(),
            }),
        })
    }

    pub fn len(&self) -> usize {
        self.lock().grants.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The role of `token` now.
    pub fn role(&self, token: &str) -> Result<Role, Refusal> {
        let mut state = self.lock();
        if state.checked.elapsed() >= RECHECK {
            state.checked = Instant::now();
            let modified = std::fs::metadata(&self.path)
                .and_then(|m| m.modified())
                .ok();
            if modified != state.modified {
                match read(&self.path) {
                    Ok((grants, modified)) => {
                        eprintln!(
                            "arrowpoold: flight: {} read again: {} token(s)",
                            self.path.display(),
                            grants.len()
                        );
                        state.grants = grants;
                        state.modified = modified;
                    }
                    Err(e) => {
                        // Keep the tokens we had; say so once per change.
                        eprintln!("arrowpoold: flight: {e}; the previous tokens stay in force");
                        state.modified = modified;
                    }
                }
            }
        }
        // Compare every known token in constant time, so the time taken says
        // nothing about how much of a guess was right.
        let mut found: Option<&Grant> = None;
        for (known, grant) in &state.grants {
            if constant_time_eq(known.as_bytes(), token.as_bytes()) {
                found = Some(grant);
            }
        }
        let grant = found.ok_or(Refusal::Unknown)?;
        if let Some(at) = grant.expires {
            if SystemTime::now() >= at {
                return Err(Refusal::Expired(format_time(at)));
            }
        }
        Ok(grant.role)
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn format_time(t: SystemTime) -> String {
    let d: chrono::DateTime<chrono::Utc> = t.into();
    d.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

type Read = (HashMap<String, Grant>, Option<SystemTime>);

fn read(path: &Path) -> Result<Read, String> {
    let at = |why: String| format!("token file {}: {why}", path.display());
    let meta = std::fs::metadata(path).map_err(|e| at(e.to_string()))?;
    if meta.mode() & 0o077 != 0 {
        return Err(at(format!(
            "readable or writable by other users (mode {:o}); chmod 600 it",
            meta.mode() & 0o777
        )));
    }
    let text = std::fs::read_to_string(path).map_err(|e| at(e.to_string()))?;
    let grants = parse(&text).map_err(at)?;
    Ok((grants, meta.modified().ok()))
}

/// Parses the lines of a token file.
fn parse(text: &str) -> Result<HashMap<String, Grant>, String> {
    let mut grants = HashMap::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let n = i + 1;
        let words: Vec<&str> = line.split_whitespace().collect();
        if !(2..=3).contains(&words.len()) {
            return Err(format!(
                "line {n}: expected `ROLE TOKEN [EXPIRES]`, found {} words",
                words.len()
            ));
        }
        let role = Role::parse(words[0]).ok_or_else(|| {
            format!(
                "line {n}: unknown role {:?} (read, write or admin)",
                words[0]
            )
        })?;
        let token = words[1];
        if token.chars().count() < TOKEN_MIN_CHARS || !token.chars().all(|c| c.is_ascii_graphic()) {
            return Err(format!(
                "line {n}: a token must be at least {TOKEN_MIN_CHARS} printable ASCII characters"
            ));
        }
        let expires = match words.get(2) {
            None => None,
            Some(w) => Some(
                chrono::DateTime::parse_from_rfc3339(w)
                    .map_err(|e| {
                        format!(
                            "line {n}: expiry {w:?} is not an RFC 3339 time \
                             (e.g. 2027-06-30T00:00:00Z): {e}"
                        )
                    })?
                    .into(),
            ),
        };
        if grants
            .insert(token.to_owned(), Grant { role, expires })
            .is_some()
        {
            return Err(format!("line {n}: the same token appears twice"));
        }
    }
    Ok(grants)
}

/// The token of an `authorization` header value: `Bearer TOKEN`, or `Basic
/// base64(user:TOKEN)` (the handshake of pyarrow's `authenticate_basic_token`).
pub fn token_of(header: &str) -> Option<String> {
    let (scheme, rest) = header.trim().split_once(' ')?;
    if scheme.eq_ignore_ascii_case("bearer") {
        return Some(rest.trim().to_owned());
    }
    if scheme.eq_ignore_ascii_case("basic") {
        use base64::Engine;
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(rest.trim())
            .ok()?;
        let text = String::from_utf8(decoded).ok()?;
        let (_, password) = text.split_once(':')?;
        return Some(password.to_owned());
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_roles_tokens_and_expiry() {
        let g = parse(
            "# comment\nread aaaaaaaaaaaaaaaa 2027-06-30T00:00:00Z\n\nwrite bbbbbbbbbbbbbbbb # note\nadmin cccccccccccccccc\n",
        )
        .unwrap();
        assert_eq!(g.len(), 3);
        assert_eq!(g["aaaaaaaaaaaaaaaa"].role, Role::Read);
        assert!(g["aaaaaaaaaaaaaaaa"].expires.is_some());
        assert_eq!(g["cccccccccccccccc"].role, Role::Admin);
        assert!(Role::Admin > Role::Write && Role::Write > Role::Read);
    }

    #[test]
    fn refuses_bad_lines_with_their_number() {
        for (text, needle) in [
            ("reader aaaaaaaaaaaaaaaa", "line 1: unknown role"),
            ("read short", "at least 16"),
            ("\nread aaaaaaaaaaaaaaaa tomorrow", "line 2: expiry"),
            ("read", "expected `ROLE TOKEN"),
            (
                "read aaaaaaaaaaaaaaaa\nwrite aaaaaaaaaaaaaaaa",
                "line 2: the same token",
            ),
        ] {
            let e = parse(text).unwrap_err();
            assert!(e.contains(needle), "{text:?}: {e}");
        }
    }

    #[test]
    fn header_forms() {
        assert_eq!(token_of("Bearer abc").as_deref(), Some("abc"));
        assert_eq!(token_of("bearer  abc ").as_deref(), Some("abc"));
        // base64("user:tok")
        assert_eq!(token_of("Basic dXNlcjp0b2s=").as_deref(), Some("tok"));
        assert_eq!(token_of("Digest x"), None);
        assert_eq!(token_of("Bearer"), None);
    }

    #[test]
    fn expired_and_unknown_tokens_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens");
        std::fs::write(
            &path,
            "read aaaaaaaaaaaaaaaa 2001-01-01T00:00:00Z\nwrite bbbbbbbbbbbbbbbb\n",
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(Tokens::load(&path).unwrap_err().contains("chmod 600"));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let t = Tokens::load(&path).unwrap();
        assert_eq!(t.role("bbbbbbbbbbbbbbbb"), Ok(Role::Write));
        assert_eq!(t.role("bbbbbbbbbbbbbbbx"), Err(Refusal::Unknown));
        assert_eq!(
            t.role("aaaaaaaaaaaaaaaa"),
            Err(Refusal::Expired("2001-01-01T00:00:00Z".into()))
        );
    }
}
