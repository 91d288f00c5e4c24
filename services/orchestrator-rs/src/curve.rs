//! CURVE key files for the tcp:// frontends (SPEC.md §2): the pod's own secret certificate and
//! the allowlist of client public keys, read from ZeroMQ certificate files (ZPL text with Z85
//! keys, as pyzmq's `zmq.auth.create_certificates` and `neutrino keygen` write them):
//!
//! ```text
//! metadata
//! curve
//!     public-key = "qP]gS{zP75SreyO:hj[DX]zl^[#=z:LFL4z)6oXo"
//!     secret-key = "=h[<<1.90XEhSQI[GL-}@8GeYz7/]X@M9=}tI#8z"     (NAME.key_secret only)
//! ```

use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// A CURVE key, binary (as libzmq takes it and as ZAP hands it over).
pub type Key = [u8; 32];

/// What the frontends need: the server's key pair and the client keys let in.
#[derive(Clone, PartialEq, Eq)]
pub struct ServerKeys {
    pub secret: Key,
    /// From the secret file's `public-key` (for the log line that clients can check against).
    pub public: Key,
    /// Allowed client public keys, each with the name of the file it came from (`gateway` for
    /// `gateway.key`): the ZAP user id.
    pub clients: HashMap<Key, String>,
}

impl std::fmt::Debug for ServerKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the secret key.
        f.debug_struct("ServerKeys")
            .field("public", &z85_encode(&self.public))
            .field("clients", &self.clients.len())
            .finish_non_exhaustive()
    }
}

/// The `curve` section of one certificate file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Certificate {
    pub public: Option<Key>,
    pub secret: Option<Key>,
}

impl ServerKeys {
    /// Reads `--curve-secret-key` and `--curve-clients` (a directory of `*.key` files, or one file).
    pub fn load(secret_file: &Path, clients: &Path) -> Result<ServerKeys, String> {
        let cert = read_certificate(secret_file).map_err(|e| format!("--curve-secret-key {e}"))?;
        let (Some(secret), Some(public)) = (cert.secret, cert.public) else {
            return Err(format!(
                "--curve-secret-key {}: needs both public-key and secret-key in its curve section \
                 (the NAME.key_secret file that `neutrino keygen NAME` writes, not NAME.key)",
                secret_file.display()
            ));
        };
        let clients = load_allowlist(clients).map_err(|e| format!("--curve-clients {e}"))?;
        Ok(ServerKeys { secret, public, clients })
    }
}

/// Every public key in `path`: a directory's `*.key` files, or the one file named.
fn load_allowlist(path: &Path) -> Result<HashMap<Key, String>, String> {
    let files: Vec<PathBuf> = if path.is_dir() {
        let entries = std::fs::read_dir(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let mut files = Vec::new();
        for entry in entries {
            let p = entry.map_err(|e| format!("{}: {e}", path.display()))?.path();
            if p.extension().is_some_and(|ext| ext == "key") && !p.is_dir() {
                files.push(p);
            }
        }
        files.sort();
        files
    } else {
        vec![path.to_path_buf()]
    };
    let mut keys = HashMap::new();
    for file in &files {
        let cert = read_certificate(file)?;
        let key = cert.public.ok_or_else(|| format!("{}: no public-key in its curve section", file.display()))?;
        let name = file.file_stem().map_or_else(String::new, |s| s.to_string_lossy().into_owned());
        keys.insert(key, name);
    }
    if keys.is_empty() {
        return Err(format!(
            "{}: no client public keys (*.key files) found; an empty allowlist would refuse every client",
            path.display()
        ));
    }
    Ok(keys)
}

fn read_certificate(path: &Path) -> Result<Certificate, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    parse_certificate(&text).map_err(|e| format!("{}: {e}", path.display()))
}

/// Parses a ZPL certificate (ZeroMQ RFC 4: `name = value` lines, nesting by 4-space indentation,
/// `#` comments) and returns its `curve` section's keys.
pub fn parse_certificate(text: &str) -> Result<Certificate, String> {
    let mut cert = Certificate { public: None, secret: None };
    let mut in_curve = false;
    for (n, raw) in text.lines().enumerate() {
        let line = raw.trim_end();
        let body = line.trim_start();
        if body.is_empty() || body.starts_with('#') {
            continue;
        }
        let indent = line.len() - body.len();
        if indent == 0 {
            in_curve = name_of(body) == "curve";
            continue;
        }
        if !in_curve || indent != 4 {
            continue; // other sections (metadata), or deeper levels
        }
        let Some((name, value)) = body.split_once('=') else {
            continue;
        };
        let slot = match name.trim() {
            "public-key" => &mut cert.public,
            "secret-key" => &mut cert.secret,
            _ => continue,
        };
        let value = unquote(value.trim()).map_err(|e| format!("line {}: {e}", n + 1))?;
        let key = z85_decode(value)
            .ok_or_else(|| format!("line {}: {} is not a 40-character Z85 key", n + 1, name.trim()))?;
        *slot = Some(key);
    }
    if cert.public.is_none() && cert.secret.is_none() {
        return Err("not a ZeroMQ certificate: no public-key or secret-key in a curve section".into());
    }
    Ok(cert)
}

/// `name` of a `name` or `name = value` line.
fn name_of(line: &str) -> &str {
    line.split(['=', '#']).next().unwrap_or("").trim()
}

/// A ZPL value: `"..."` or `'...'` (Z85 has neither quote), or bare up to a `#` comment.
fn unquote(value: &str) -> Result<&str, String> {
    for q in ['"', '\''] {
        if let Some(rest) = value.strip_prefix(q) {
            return rest.split_once(q).map(|(v, _)| v).ok_or_else(|| format!("unterminated {q} in value"));
        }
    }
    Ok(value.split('#').next().unwrap_or("").trim())
}

const Z85: &[u8; 85] = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.-:+=^!/*?&<>()[]{}@%$#";

/// Decodes a 40-character Z85 key (ZeroMQ RFC 32); `None` for anything else.
pub fn z85_decode(text: &str) -> Option<Key> {
    let bytes = text.as_bytes();
    if bytes.len() != 40 {
        return None;
    }
    let mut key = [0u8; 32];
    for (chunk, out) in bytes.chunks(5).zip(key.chunks_mut(4)) {
        let mut value: u64 = 0;
        for &c in chunk {
            value = value * 85 + Z85.iter().position(|&a| a == c)? as u64;
        }
        out.copy_from_slice(&u32::try_from(value).ok()?.to_be_bytes());
    }
    Some(key)
}

/// Encodes a key as Z85 (for logs and user ids).
pub fn z85_encode(key: &Key) -> String {
    let mut text = String::with_capacity(40);
    for chunk in key.chunks(4) {
        let mut value = u32::from_be_bytes(chunk.try_into().expect("chunks of 4")) as usize;
        let mut digits = [0u8; 5];
        for d in digits.iter_mut().rev() {
            *d = Z85[value % 85];
            value /= 85;
        }
        text.extend(digits.iter().map(|&b| b as char));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Written by pyzmq 27's `zmq.auth.create_certificates(dir, "server")` (test keys only).
    const SERVER_SECRET: &str = include_str!("../tests/fixtures/curve/server.key_secret");
    const CLIENT_PUBLIC: &str = include_str!("../tests/fixtures/curve/client.key");
    /// The same keys as pyzmq's `zmq.utils.z85.decode` reads them.
    const SERVER_PUBLIC_HEX: &str = "52cc0215f71a8eb9a90296efc7c2abf0ba716408f2ae619293c1c062ecb25721";
    const CLIENT_PUBLIC_HEX: &str = "9f177ca485f2d8741cf8ca32ab38ee28f5f2fc713b1b20bc4f6fa36d7c9a8820";

    fn hex(key: &Key) -> String {
        key.iter().map(|b| format!("{b:02x}")).collect()
    }

    fn fixtures() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/curve")
    }

    #[test]
    fn parses_pyzmq_certificates() {
        let server = parse_certificate(SERVER_SECRET).unwrap();
        assert_eq!(hex(&server.public.unwrap()), SERVER_PUBLIC_HEX);
        let secret = server.secret.expect("the secret file has the secret key");
        assert_eq!(z85_encode(&secret), "=h[<<1.90XEhSQI[GL-}@8GeYz7/]X@M9=}tI#8z");
        let client = parse_certificate(CLIENT_PUBLIC).unwrap();
        assert_eq!(hex(&client.public.unwrap()), CLIENT_PUBLIC_HEX);
        assert_eq!(client.secret, None);
    }

    #[test]
    fn z85_matches_libzmq() {
        for key in [[0u8; 32], [0xff; 32], std::array::from_fn(|i| (i * 37) as u8)] {
            let ours = z85_encode(&key);
            assert_eq!(ours, zmq::z85_encode(&key).unwrap());
            assert_eq!(z85_decode(&ours), Some(key));
        }
        // ZeroMQ RFC 32's test vector, padded to a key's length by repetition.
        let hello = [0x86, 0x4F, 0xD2, 0x6F, 0xB5, 0x59, 0xF7, 0x5B].repeat(4);
        assert_eq!(z85_encode(&hello.try_into().unwrap()), "HelloWorld".repeat(4));
    }

    #[test]
    fn rejects_bad_keys() {
        assert_eq!(z85_decode("short"), None);
        assert_eq!(z85_decode(&"\"".repeat(40)), None, "not in the alphabet");
        assert_eq!(z85_decode(&"#".repeat(40)), None, "over 2^32 per group");
        let bad = "curve\n    public-key = \"tooshort\"\n";
        assert!(parse_certificate(bad).unwrap_err().contains("line 2: public-key is not a 40-character Z85 key"));
        let unterminated = "curve\n    public-key = \"qP]gS{zP75SreyO:hj[DX]zl^[#=z:LFL4z)6oXo\n";
        assert!(parse_certificate(unterminated).unwrap_err().contains("unterminated"));
        assert!(parse_certificate("metadata\n    public-key = \"x\"\n")
            .unwrap_err()
            .contains("not a ZeroMQ certificate"));
    }

    #[test]
    fn zpl_variants() {
        let key = "qP]gS{zP75SreyO:hj[DX]zl^[#=z:LFL4z)6oXo";
        let text = format!(
            "# comment\nmetadata\n    public-key = \"ignored, not curve\"\ncurve   # the keys\n    public-key = '{key}'   # c\n"
        );
        assert_eq!(hex(&parse_certificate(&text).unwrap().public.unwrap()), SERVER_PUBLIC_HEX);
        // A bare value ends at a `#` comment, so only keys without `#` can be written bare.
        let plain: Key = [1; 32]; // "0rAi4" x 8
        let bare = format!("curve\n    public-key = {}  # c\n", z85_encode(&plain));
        assert_eq!(parse_certificate(&bare).unwrap().public, Some(plain));
    }

    #[test]
    fn loads_server_keys_and_allowlist() {
        let dir = fixtures();
        let keys = ServerKeys::load(&dir.join("server.key_secret"), &dir).unwrap();
        assert_eq!(hex(&keys.public), SERVER_PUBLIC_HEX);
        // The directory's *.key files only: client.key, not server.key_secret.
        assert_eq!(keys.clients.len(), 1);
        let (client, name) = keys.clients.iter().next().unwrap();
        assert_eq!((hex(client).as_str(), name.as_str()), (CLIENT_PUBLIC_HEX, "client"));
        assert!(!format!("{keys:?}").contains("h[<<1"), "Debug must not show the secret key");
        // One file works too.
        let one = ServerKeys::load(&dir.join("server.key_secret"), &dir.join("client.key")).unwrap();
        assert_eq!(one.clients, keys.clients);
    }

    #[test]
    fn load_errors_are_clear() {
        let dir = fixtures();
        let e = ServerKeys::load(&dir.join("client.key"), &dir).unwrap_err();
        assert!(e.starts_with("--curve-secret-key") && e.contains("needs both public-key and secret-key"), "{e}");
        let e = ServerKeys::load(&dir.join("missing.key_secret"), &dir).unwrap_err();
        assert!(e.starts_with("--curve-secret-key") && e.contains("missing.key_secret"), "{e}");
        let empty = std::env::temp_dir().join(format!("neutrino-curve-empty-{}", std::process::id()));
        std::fs::create_dir_all(&empty).unwrap();
        let e = ServerKeys::load(&dir.join("server.key_secret"), &empty).unwrap_err();
        let _ = std::fs::remove_dir(&empty);
        assert!(e.starts_with("--curve-clients") && e.contains("empty allowlist"), "{e}");
    }
}
