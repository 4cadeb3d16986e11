//! AWS Signature Version 4 for S3 requests (the `Authorization` header form), checked against
//! the worked examples of AWS's S3 API reference ("Signature Calculations for the Authorization
//! Header: Transferring Payload in a Single Chunk").
use ring::{digest, hmac};

/// The SHA-256 of an empty body, hex.
pub const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

/// S3 credentials (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`). `Debug`
/// shows the key id only.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// Access key id.
    pub access_key: String,
    /// Secret access key.
    pub secret_key: String,
    /// Session token of temporary credentials (sent as `x-amz-security-token`).
    pub session_token: Option<String>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("access_key", &self.access_key)
            .field("secret_key", &"<redacted>")
            .field(
                "session_token",
                &self.session_token.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

/// One request as SigV4 sees it.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// `GET`, `PUT`, ...
    pub method: &'a str,
    /// The URL path, already percent-encoded once (`/bucket/key%20name`).
    pub canonical_uri: &'a str,
    /// The query, already canonical: sorted by name, `name=value` pairs encoded with
    /// [`encode_query_part`] and joined by `&` (`""` when none).
    pub canonical_query: &'a str,
    /// Headers to sign, lower-case names; `host`, `x-amz-date` and `x-amz-content-sha256` among
    /// them. Sorted here.
    pub headers: &'a [(&'a str, &'a str)],
    /// Hex SHA-256 of the body (the `x-amz-content-sha256` value).
    pub payload_hash: &'a str,
}

/// Hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(digest::digest(&digest::SHA256, bytes).as_ref())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn hmac_sha256(key: &[u8], data: &[u8]) -> Vec<u8> {
    let k = hmac::Key::new(hmac::HMAC_SHA256, key);
    hmac::sign(&k, data).as_ref().to_vec()
}

/// Percent-encodes a query name or value as SigV4 wants it: everything but `A-Z a-z 0-9 - _ . ~`.
pub fn encode_query_part(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// The canonical query of `pairs` (sorted, encoded; a bare name gets `=`).
pub fn canonical_query(pairs: &[(&str, &str)]) -> String {
    let mut enc: Vec<(String, String)> = pairs
        .iter()
        .map(|(k, v)| (encode_query_part(k), encode_query_part(v)))
        .collect();
    enc.sort();
    enc.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&")
}

fn sorted_headers<'a>(req: &Request<'a>) -> Vec<(&'a str, &'a str)> {
    let mut h = req.headers.to_vec();
    h.sort_by(|a, b| a.0.cmp(b.0));
    h
}

/// The canonical request (step 1 of SigV4).
pub fn canonical_request(req: &Request<'_>) -> String {
    let headers = sorted_headers(req);
    let canonical_headers: String = headers
        .iter()
        .map(|(k, v)| format!("{k}:{}\n", v.trim()))
        .collect();
    let signed: Vec<&str> = headers.iter().map(|(k, _)| *k).collect();
    format!(
        "{}\n{}\n{}\n{canonical_headers}\n{}\n{}",
        req.method,
        req.canonical_uri,
        req.canonical_query,
        signed.join(";"),
        req.payload_hash
    )
}

/// `yyyymmdd/region/s3/aws4_request`.
fn scope(amz_date: &str, region: &str) -> String {
    format!(
        "{}/{region}/s3/aws4_request",
        &amz_date[..8.min(amz_date.len())]
    )
}

/// The string to sign (step 2), for `amz_date` (`yyyymmddThhmmssZ`).
pub fn string_to_sign(req: &Request<'_>, region: &str, amz_date: &str) -> String {
    format!(
        "AWS4-HMAC-SHA256\n{amz_date}\n{}\n{}",
        scope(amz_date, region),
        sha256_hex(canonical_request(req).as_bytes())
    )
}

/// The hex signature (steps 3 and 4).
pub fn signature(creds: &Credentials, req: &Request<'_>, region: &str, amz_date: &str) -> String {
    let date = &amz_date[..8.min(amz_date.len())];
    let k_date = hmac_sha256(
        format!("AWS4{}", creds.secret_key).as_bytes(),
        date.as_bytes(),
    );
    let k_region = hmac_sha256(&k_date, region.as_bytes());
    let k_service = hmac_sha256(&k_region, b"s3");
    let k_signing = hmac_sha256(&k_service, b"aws4_request");
    hex(&hmac_sha256(
        &k_signing,
        string_to_sign(req, region, amz_date).as_bytes(),
    ))
}

/// The `Authorization` header value.
pub fn authorization(
    creds: &Credentials,
    req: &Request<'_>,
    region: &str,
    amz_date: &str,
) -> String {
    let signed: Vec<&str> = sorted_headers(req).iter().map(|(k, _)| *k).collect();
    format!(
        "AWS4-HMAC-SHA256 Credential={}/{}, SignedHeaders={}, Signature={}",
        creds.access_key,
        scope(amz_date, region),
        signed.join(";"),
        signature(creds, req, region, amz_date)
    )
}

/// `yyyymmddThhmmssZ` for `ms` since the Unix epoch (UTC).
pub fn amz_date(ms: i64) -> String {
    // "YYYY-MM-DD HH:MM:SS.ffffff"
    let t = crate::tracking::inputs::chrono_like_utc(ms);
    let digits: String = t.chars().take(19).filter(char::is_ascii_digit).collect();
    format!("{}T{}Z", &digits[..8], &digits[8..])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The credentials of AWS's S3 SigV4 examples.
    fn example_creds() -> Credentials {
        Credentials {
            access_key: "AKIAIOSFODNN7EXAMPLE".into(),
            secret_key: "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY".into(),
            session_token: None,
        }
    }

    const DATE: &str = "20130524T000000Z";
    const HOST: &str = "examplebucket.s3.amazonaws.com";

    #[test]
    fn aws_example_get_object() {
        let headers = [
            ("host", HOST),
            ("range", "bytes=0-9"),
            ("x-amz-content-sha256", EMPTY_SHA256),
            ("x-amz-date", DATE),
        ];
        let req = Request {
            method: "GET",
            canonical_uri: "/test.txt",
            canonical_query: "",
            headers: &headers,
            payload_hash: EMPTY_SHA256,
        };
        let sts = string_to_sign(&req, "us-east-1", DATE);
        assert!(
            sts.ends_with("7344ae5b7ee6c3e7e6b0fe0640412a37625d1fbfff95c48bbb2dc43964946972"),
            "{sts}"
        );
        assert_eq!(
            authorization(&example_creds(), &req, "us-east-1", DATE),
            "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request, \
             SignedHeaders=host;range;x-amz-content-sha256;x-amz-date, \
             Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41"
        );
    }

    #[test]
    fn aws_example_put_object() {
        let body = b"Welcome to Amazon S3.";
        let hash = sha256_hex(body);
        assert_eq!(
            hash,
            "44ce7dd67c959e0d3524ffac1771dfbba87d2b6b4b4e99e42034a8b803f8b072"
        );
        let headers = [
            ("date", "Fri, 24 May 2013 00:00:00 GMT"),
            ("host", HOST),
            ("x-amz-content-sha256", hash.as_str()),
            ("x-amz-date", DATE),
            ("x-amz-storage-class", "REDUCED_REDUNDANCY"),
        ];
        let req = Request {
            method: "PUT",
            canonical_uri: &format!(
                "/{}",
                crate::tracking::rest::encoding::encode_path("test$file.text")
            ),
            canonical_query: "",
            headers: &headers,
            payload_hash: &hash,
        };
        assert_eq!(req.canonical_uri, "/test%24file.text");
        assert_eq!(
            signature(&example_creds(), &req, "us-east-1", DATE),
            "98ad721746da40c64f1a55b78f14c238d841ea1380cd77a1b5971af0ece108bd"
        );
    }

    #[test]
    fn aws_example_get_bucket_lifecycle_and_list_objects() {
        let headers = [
            ("host", HOST),
            ("x-amz-content-sha256", EMPTY_SHA256),
            ("x-amz-date", DATE),
        ];
        let lifecycle = canonical_query(&[("lifecycle", "")]);
        assert_eq!(lifecycle, "lifecycle=");
        let req = Request {
            method: "GET",
            canonical_uri: "/",
            canonical_query: &lifecycle,
            headers: &headers,
            payload_hash: EMPTY_SHA256,
        };
        assert_eq!(
            signature(&example_creds(), &req, "us-east-1", DATE),
            "fea454ca298b7da1c68078a5d1bdbfbbe0d65c699e0f91ac7a200a0136783543"
        );
        let list = canonical_query(&[("prefix", "J"), ("max-keys", "2")]);
        assert_eq!(list, "max-keys=2&prefix=J");
        let req = Request {
            canonical_query: &list,
            ..req
        };
        assert_eq!(
            signature(&example_creds(), &req, "us-east-1", DATE),
            "34b48302e7b5fa45bde8084f4b7868a86f0a534bc59db6670ed5711ef69dc6f7"
        );
    }

    #[test]
    fn query_parts_encode_slashes_and_spaces() {
        assert_eq!(encode_query_part("a/b c+d"), "a%2Fb%20c%2Bd");
        assert_eq!(encode_query_part("x-y_z.~"), "x-y_z.~");
    }

    #[test]
    fn amz_dates() {
        assert_eq!(amz_date(0), "19700101T000000Z");
        // 2013-05-24T00:00:00Z
        assert_eq!(amz_date(1_369_353_600_000), DATE);
    }

    #[test]
    fn debug_hides_the_secret_and_token() {
        let c = Credentials {
            session_token: Some("TOKEN-SECRET".into()),
            ..example_creds()
        };
        let d = format!("{c:?}");
        assert!(
            !d.contains("EXAMPLEKEY") && !d.contains("TOKEN-SECRET"),
            "{d}"
        );
        assert!(d.contains("AKIAIOSFODNN7EXAMPLE"), "{d}");
    }
}
