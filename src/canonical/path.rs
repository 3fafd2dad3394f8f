//! The canonical form of a request path (RFC 3986): unreserved characters decoded (§2.3,
//! §6.2.2.2), other escapes upper-cased, characters that may not stand raw escaped, dot
//! segments removed (§5.2.4) and, unless switched off, repeated slashes merged. Separators
//! hidden in escapes (`%2F`, `%5C`, `%00`), a raw `\` and a path that climbs above `/` are
//! refused: a service behind the gateway could read them as a different path than the one
//! the gateway decided on.

/// What to do with `%2F` in a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EncodedSlash {
    /// Refuse the request (400).
    #[default]
    Reject,
    /// Keep it encoded as `%2F`, never decoded: for services whose identifiers hold `/`.
    Keep,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PathRules {
    pub merge_slashes: bool,
    pub encoded_slash: EncodedSlash,
}

impl Default for PathRules {
    fn default() -> Self {
        PathRules {
            merge_slashes: true,
            encoded_slash: EncodedSlash::Reject,
        }
    }
}

/// Why a path has no canonical form.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathError {
    /// `%` not followed by two hex digits.
    BadEscape,
    /// `%2F` (with `encoded_slash: reject`), `%5C` or `%00`.
    EncodedSeparator,
    /// A raw `\`, which some servers read as `/`.
    Backslash,
    /// A control character.
    ControlCharacter,
    /// More `..` segments than there are segments above them.
    AboveRoot,
    /// Not starting with `/`.
    NotAbsolute,
}

impl PathError {
    pub fn message(self) -> &'static str {
        match self {
            PathError::BadEscape => "the path holds a malformed percent-escape",
            PathError::EncodedSeparator => "the path holds an encoded separator (%2F, %5C or %00)",
            PathError::Backslash => "the path holds a backslash",
            PathError::ControlCharacter => "the path holds a control character",
            PathError::AboveRoot => "the path climbs above the root",
            PathError::NotAbsolute => "the request target is not an absolute path",
        }
    }
}

#[inline]
fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// Characters a path segment may hold raw (RFC 3986 `pchar` less escapes).
#[inline]
fn is_pchar(b: u8) -> bool {
    is_unreserved(b)
        || matches!(
            b,
            b'!' | b'$'
                | b'&'
                | b'\''
                | b'('
                | b')'
                | b'*'
                | b'+'
                | b','
                | b';'
                | b'='
                | b':'
                | b'@'
        )
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

const HEX: &[u8; 16] = b"0123456789ABCDEF";

/// `b` as `%XX` (upper-case hex, RFC 3986 §2.1).
pub fn push_escaped(out: &mut String, b: u8) {
    out.push('%');
    out.push(HEX[usize::from(b >> 4)] as char);
    out.push(HEX[usize::from(b & 15)] as char);
}

/// Whether `path` is canonical already: the common case, checked without allocating.
fn is_canonical(path: &[u8], rules: &PathRules) -> bool {
    if path.first() != Some(&b'/') {
        return false;
    }
    let mut segment_start = 1;
    for (i, &b) in path.iter().enumerate().skip(1) {
        if b == b'/' {
            let seg = &path[segment_start..i];
            if (seg.is_empty() && rules.merge_slashes) || seg == b"." || seg == b".." {
                return false;
            }
            segment_start = i + 1;
        } else if !is_pchar(b) {
            return false;
        }
    }
    let last = &path[segment_start..];
    last != b"." && last != b".."
}

/// The canonical form of `path` (the bytes before `?`); `None` when it is canonical
/// already. Applying it twice gives what applying it once gave.
pub fn canonical(path: &[u8], rules: &PathRules) -> Result<Option<String>, PathError> {
    if path.first() != Some(&b'/') {
        return Err(PathError::NotAbsolute);
    }
    if is_canonical(path, rules) {
        return Ok(None);
    }
    // Each kept segment as a range of `out`; `out` is rebuilt from them at the end.
    let mut decoded = String::with_capacity(path.len());
    let mut segments: Vec<(usize, usize)> = Vec::new();
    let mut trailing_slash = false;
    let raw_segments: Vec<&[u8]> = path[1..].split(|&b| b == b'/').collect();
    let count = raw_segments.len();
    for (n, raw) in raw_segments.into_iter().enumerate() {
        let last = n + 1 == count;
        let start = decoded.len();
        let mut i = 0;
        while i < raw.len() {
            let b = raw[i];
            match b {
                b'%' => {
                    let (Some(hi), Some(lo)) = (
                        raw.get(i + 1).copied().and_then(hex_value),
                        raw.get(i + 2).copied().and_then(hex_value),
                    ) else {
                        return Err(PathError::BadEscape);
                    };
                    let v = (hi << 4) | lo;
                    if is_unreserved(v) {
                        decoded.push(v as char);
                    } else if v == b'/' && rules.encoded_slash == EncodedSlash::Keep {
                        decoded.push_str("%2F");
                    } else if matches!(v, b'/' | b'\\' | 0) {
                        return Err(PathError::EncodedSeparator);
                    } else {
                        push_escaped(&mut decoded, v);
                    }
                    i += 3;
                    continue;
                }
                b'\\' => return Err(PathError::Backslash),
                0..=0x1f | 0x7f => return Err(PathError::ControlCharacter),
                _ if is_pchar(b) => decoded.push(b as char),
                _ => push_escaped(&mut decoded, b),
            }
            i += 1;
        }
        let seg = &decoded[start..];
        match seg {
            "." => {
                decoded.truncate(start);
                trailing_slash = last;
            }
            ".." => {
                decoded.truncate(start);
                if segments.pop().is_none() {
                    return Err(PathError::AboveRoot);
                }
                trailing_slash = last;
            }
            "" if last => trailing_slash = true,
            "" if rules.merge_slashes => {}
            _ => segments.push((start, decoded.len())),
        }
    }
    let mut out = String::with_capacity(decoded.len() + segments.len() + 1);
    for &(start, end) in &segments {
        out.push('/');
        out.push_str(&decoded[start..end]);
    }
    if trailing_slash || segments.is_empty() {
        out.push('/');
    }
    if out.as_bytes() == path {
        return Ok(None);
    }
    Ok(Some(out))
}

/// A query with every byte that may not stand raw in a URI escaped; `None` when there is
/// none (the common case). The query's meaning is the service's: nothing else changes.
pub fn escaped_query(query: &[u8]) -> Option<String> {
    let allowed = |b: u8| is_pchar(b) || matches!(b, b'/' | b'?' | b'%');
    if query.iter().all(|&b| allowed(b)) {
        return None;
    }
    let mut out = String::with_capacity(query.len() + 8);
    for &b in query {
        if allowed(b) {
            out.push(b as char);
        } else {
            push_escaped(&mut out, b);
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn canon(p: &str) -> Result<String, PathError> {
        canonical(p.as_bytes(), &PathRules::default()).map(|c| c.unwrap_or_else(|| p.to_string()))
    }

    #[test]
    fn attacks_from_the_issue_come_out_as_the_admin_path() {
        for raw in [
            "//admin/secret",
            "/./admin/secret",
            "/public/../admin/secret",
            "/public/%2e%2e/admin/secret",
            "/%61dmin/secret",
            "/public/%2E%2E/admin/./secret",
        ] {
            assert_eq!(canon(raw).as_deref(), Ok("/admin/secret"), "{raw}");
        }
    }

    #[test]
    fn refusals() {
        assert_eq!(
            canon("/public%2F..%2Fadmin"),
            Err(PathError::EncodedSeparator)
        );
        assert_eq!(canon("/a%5cb"), Err(PathError::EncodedSeparator));
        assert_eq!(canon("/a%00b"), Err(PathError::EncodedSeparator));
        assert_eq!(canon("/a\\b"), Err(PathError::Backslash));
        assert_eq!(canon("/../etc"), Err(PathError::AboveRoot));
        assert_eq!(canon("/a/%2e%2e/.."), Err(PathError::AboveRoot));
        assert_eq!(canon("/a%4"), Err(PathError::BadEscape));
        assert_eq!(canon("/a%zz"), Err(PathError::BadEscape));
        assert_eq!(canon("a/b"), Err(PathError::NotAbsolute));
    }

    #[test]
    fn keeps_what_is_not_unreserved() {
        assert_eq!(canon("/a%20b").as_deref(), Ok("/a%20b"));
        assert_eq!(canon("/a%3fb%e2%82%ac").as_deref(), Ok("/a%3Fb%E2%82%AC"));
        assert_eq!(canon("/a\"b{").as_deref(), Ok("/a%22b%7B"));
        assert_eq!(canon("/x:y@z;p=1").as_deref(), Ok("/x:y@z;p=1"));
    }

    #[test]
    fn trailing_slashes_and_roots() {
        assert_eq!(canon("/").as_deref(), Ok("/"));
        assert_eq!(canon("/a/").as_deref(), Ok("/a/"));
        assert_eq!(canon("/a/.").as_deref(), Ok("/a/"));
        assert_eq!(canon("/a/..").as_deref(), Ok("/"));
        assert_eq!(canon("/a//").as_deref(), Ok("/a/"));
        assert_eq!(canon("//").as_deref(), Ok("/"));
        assert_eq!(canon("/a//../b").as_deref(), Ok("/b"));
    }

    #[test]
    fn slashes_kept_when_asked() {
        let keep = PathRules {
            merge_slashes: false,
            encoded_slash: EncodedSlash::Keep,
        };
        let c = |p: &str| canonical(p.as_bytes(), &keep).map(|c| c.unwrap_or(p.to_string()));
        assert_eq!(c("/a//b").as_deref(), Ok("/a//b"));
        assert_eq!(c("/a%2fb/../c").as_deref(), Ok("/c"));
        assert_eq!(c("/a%2fb").as_deref(), Ok("/a%2Fb"));
        assert_eq!(c("/a/%2e%2e%2fb").as_deref(), Ok("/a/..%2Fb"));
        assert_eq!(c("/a%5Cb"), Err(PathError::EncodedSeparator));
    }

    #[test]
    fn queries_are_only_escaped() {
        assert_eq!(escaped_query(b"a=1&b=%2F/x?y"), None);
        assert_eq!(
            escaped_query("q=\u{e9} x".as_bytes()).as_deref(),
            Some("q=%C3%A9%20x")
        );
    }
}
