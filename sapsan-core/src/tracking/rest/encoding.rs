//! Percent-decoding of URI parts (artifact paths, credentials in a tracking URI).

/// Decodes `%XX` escapes (URI paths, and credentials written into a tracking URI).
pub(crate) fn percent_decode(p: &str) -> String {
    if !p.contains('%') {
        return p.to_owned();
    }
    let b = p.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = b
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok());
        if b[i] == b'%'
            && let Some(v) = hex.and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(v);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}
