//! The little XML S3 answers need: the text of named elements (no attributes, no nesting of the
//! same name), entities decoded.

/// The texts of every `<tag>...</tag>` in `body`, in order (raw: inner markup kept).
pub fn blocks<'a>(body: &'a str, tag: &str) -> Vec<&'a str> {
    let (open, close) = (format!("<{tag}>"), format!("</{tag}>"));
    let mut out = Vec::new();
    let mut rest = body;
    while let Some(i) = rest.find(&open) {
        let after = &rest[i + open.len()..];
        let Some(j) = after.find(&close) else { break };
        out.push(&after[..j]);
        rest = &after[j + close.len()..];
    }
    out
}

/// The decoded text of the first `<tag>...</tag>` in `body`.
pub fn first(body: &str, tag: &str) -> Option<String> {
    blocks(body, tag).first().map(|t| unescape(t))
}

/// Decodes the five predefined entities and numeric character references.
pub fn unescape(s: &str) -> String {
    if !s.contains('&') {
        return s.to_owned();
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('&') {
        out.push_str(&rest[..i]);
        let after = &rest[i..];
        let Some(end) = after.find(';') else {
            out.push_str(after);
            return out;
        };
        let entity = &after[1..end];
        let decoded = match entity {
            "amp" => Some('&'),
            "lt" => Some('<'),
            "gt" => Some('>'),
            "quot" => Some('"'),
            "apos" => Some('\''),
            e => e
                .strip_prefix("#x")
                .map(|h| u32::from_str_radix(h, 16).ok())
                .unwrap_or_else(|| e.strip_prefix('#').and_then(|d| d.parse().ok()))
                .and_then(char::from_u32),
        };
        match decoded {
            Some(c) => out.push(c),
            None => out.push_str(&after[..=end]),
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    out
}

/// Escapes text for an XML element.
pub fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_list_answers() {
        let body = "<ListBucketResult><IsTruncated>false</IsTruncated><Contents><Key>a&amp;b.txt\
                    </Key><Size>3</Size></Contents><Contents><Key>c</Key><Size>10</Size>\
                    </Contents><CommonPrefixes><Prefix>d/</Prefix></CommonPrefixes></ListBucketResult>";
        let c = blocks(body, "Contents");
        assert_eq!(c.len(), 2);
        assert_eq!(first(c[0], "Key").as_deref(), Some("a&b.txt"));
        assert_eq!(first(c[1], "Size").as_deref(), Some("10"));
        assert_eq!(first(body, "Prefix").as_deref(), Some("d/"));
        assert_eq!(first(body, "Missing"), None);
    }

    #[test]
    fn entities_round_trip() {
        assert_eq!(
            unescape("&quot;e&quot; &#34;&#x22; &bogus; & x"),
            "\"e\" \"\" &bogus; & x"
        );
        assert_eq!(unescape(&escape("\"a<b>&c\"")), "\"a<b>&c\"");
    }
}
